"""lm-eval's ``local-completions`` against a real ``phi-ray serve``, as a user would run it.

Two CLI subprocesses, nothing imported from either: ``phi-ray serve`` (its own local Ray)
and ``lm_eval --model local-completions`` with local task files: a generate_until task
with nine stop sequences and a multiple-choice (loglikelihood) task. lm-eval finds the
server's tokenizer through ``/tokenizer_info`` + ``/tokenize`` and sends token-id prompts,
as it does against vLLM. Nothing may reach the network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE).
Each loglikelihood lm-eval reports is then checked against the same model scored
in-process by transformers: 1e-4 per token. Slow (two cold starts): ``make check-clients``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from phi_ray.config import load_config
from phi_ray.model.phi import build_model
from phi_ray.model.tokenizer import get_tokenizer
from tests.serving.kit import free_port, serve_command, serve_env, wait_health

pytestmark = [
    pytest.mark.clients,
    pytest.mark.skipif(
        not os.environ.get("PHI_RAY_CHECK_CLIENTS"),
        reason="two cold starts (~minutes): `make check-clients` runs it",
    ),
]
BIN = Path(sys.executable).parent
# BigCode's stop sequences for code completion, plus one: more than OpenAI's cap of 4.
STOPS = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>", "\nassert"]
GEN = [
    {"prompt": "def add(a, b):\n    return", "target": " a + b"},
    {"prompt": "import os\n\n\ndef main():\n   ", "target": " pass"},
    {"prompt": "x = [1, 2, 3]\nfor i in x:\n    ", "target": "print(i)"},
]
MC = [
    {"question": "def square(x):\n    return x", "choices": [" * x", " + 1", " ** 3"], "answer": 0},
    {"question": "import", "choices": [" os", " sys", " json"], "answer": 1},
    {"question": "for i in range(10):", "choices": ["\n    pass", "\n    print(i)"], "answer": 1},
    {
        "question": "class Point:\n    def __init__(self, x, y):",
        "choices": ["\n        self.x = x", "\n        return"],
        "answer": 0,
    },
]


def _tasks(d: Path) -> None:
    for name, rows in (("gen", GEN), ("mc", MC)):
        with open(d / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    common = {
        "dataset_path": "json",
        "test_split": "test",
    }
    gen = {
        **common,
        "task": "phi_ray_gen",
        "dataset_kwargs": {"data_files": {"test": str(d / "gen.jsonl")}},
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}",
        "generation_kwargs": {"until": STOPS, "max_gen_toks": 24, "do_sample": False},
        "metric_list": [{"metric": "exact_match"}],
    }
    mc = {
        **common,
        "task": "phi_ray_mc",
        "dataset_kwargs": {"data_files": {"test": str(d / "mc.jsonl")}},
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc"}],
    }
    for t in (gen, mc):  # JSON is YAML: lm-eval reads these with its YAML loader
        (d / f"{t['task']}.yaml").write_text(json.dumps(t, indent=1))


@pytest.fixture(scope="module")
def phi_ray_serve(tmp_path_factory):
    """``phi-ray serve --model DIR`` in its own process group (its own local Ray)."""
    root = tmp_path_factory.mktemp("lmeval")
    model_dir = root / "model"
    build_model(load_config("tiny").model, seed=0).save_pretrained(model_dir)
    get_tokenizer().save_pretrained(model_dir)
    port = free_port()
    cmd = [*serve_command(model_dir, root, port), "--set", "run.num_cpus=2"]
    log = open(root / "serve.log", "w")  # the process outlives this block
    proc = subprocess.Popen(
        cmd, env=serve_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(proc, url, root / "serve.log")
        yield {"url": url, "model": model_dir, "root": root}
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: serve shuts down and stops its Ray
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _reference_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, int]:
    """Sum of log p(continuation | context) as lm-eval splits the pair (trailing spaces of
    the context move to the continuation; tokens = whole[len(encode(context)):])."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation)
    ctx = len(tok.encode(context))
    with torch.no_grad():
        lp = model(torch.tensor([whole])).logits.float().log_softmax(-1)[0]
    return sum(lp[i - 1, whole[i]].item() for i in range(ctx, len(whole))), len(whole) - ctx


def test_lm_eval_local_completions_against_phi_ray_serve(phi_ray_serve, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    _tasks(tmp_path)
    url = phi_ray_serve["url"]
    out = tmp_path / "out"
    args = (
        f"model=phi-1,base_url={url}/v1/completions,max_length=256,num_concurrent=2,max_retries=1"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": "x"}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "hf-datasets")
    cmd = [str(BIN / "lm_eval"), "--model", "local-completions", "--model_args", args]
    cmd += ["--tasks", "phi_ray_gen,phi_ray_mc", "--include_path", str(tmp_path)]
    cmd += ["--output_path", str(out), "--log_samples", "--seed", "0"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert "Using remote tokenizer" in log  # found through /tokenizer_info + /tokenize
    assert "API request failed" not in log  # no 4xx, no retry
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert set(results) >= {"phi_ray_gen", "phi_ray_mc"}
    samples = {
        t: [
            json.loads(x)
            for f in out.rglob(f"samples_{t}_*.jsonl")
            for x in f.read_text().splitlines()
        ]
        for t in ("phi_ray_gen", "phi_ray_mc")
    }

    # generate_until: what lm-eval got is the served greedy text, cut at the first stop.
    tok = get_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(phi_ray_serve["model"]).eval()
    assert len(samples["phi_ray_gen"]) == len(GEN)
    for s in samples["phi_ray_gen"]:
        ids = tok.encode(s["doc"]["prompt"])
        full = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
        text = tok.decode(full[0, len(ids) :])
        cut = min((i for st in STOPS if (i := text.find(st)) >= 0), default=len(text))
        assert s["resps"][0][0] == text[:cut]

    # loglikelihood: every (context, continuation) lm-eval scored, against transformers.
    rows = []
    for s in samples["phi_ray_mc"]:
        args = [(a["arg_0"], a["arg_1"]) for a in s["arguments"].values()]
        for (context, continuation), resp in zip(args, s["resps"], strict=True):
            ll = float(resp[0][0])  # the samples log writes numbers as strings
            ref, n = _reference_loglikelihood(model, tok, context, continuation)
            rows.append((context[-20:], continuation, n, ll, ref))
            assert abs(ll - ref) <= 1e-4 * n, (context, continuation, ll, ref)
    assert len(rows) == sum(len(d["choices"]) for d in MC)
    with capsys.disabled():
        print("\nlm-eval loglikelihood (served) vs transformers in-process:")
        for ctx, cont, n, ll, ref in rows:
            print(
                f"  {ctx!r:>24} + {cont!r:<22} {n:2d} tok  {ll:12.6f}  {ref:12.6f}  |d|/tok {abs(ll - ref) / n:.1e}"
            )
