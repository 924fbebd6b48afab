"""The evaluate stage end to end: a tiny checkpoint on Ray actors, an OpenAI-compatible
endpoint, re-execution of a samples file, the similar/non-similar split, LLM grading."""

from __future__ import annotations

import json
import os

import pytest

from phi_ray.config import load_config
from phi_ray.evaluate.generate import STOP_SEQUENCES, truncate
from phi_ray.evaluate.problems import load_humaneval
from phi_ray.evaluate.stage import run as evaluate
from phi_ray.llm.testserver import OpenAITestServer
from phi_ray.runs import RunDir


def _cfg(tmp_path, name, *sets):
    base = [f"run.root={tmp_path / 'runs'}", f"run.name={name}", "evaluate.parallel=2"]
    return load_config("tiny", [*base, *sets])


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from phi_ray.model.phi import build_model
    from phi_ray.model.tokenizer import get_tokenizer

    d = tmp_path_factory.mktemp("model")
    model = build_model(load_config("tiny").model, seed=0)
    model.save_pretrained(d)
    get_tokenizer().save_pretrained(d)
    return str(d)


def test_truncate_at_bigcode_stops():
    body = "    return x + 1\n"
    for stop in STOP_SEQUENCES:
        assert truncate(body + stop + " tail") == body
    assert truncate(body) == body
    assert truncate("    a = 1\n\nif __name__ == '__main__':\n    f()\n") == "    a = 1\n"


def test_checkpoint_generation_then_reexecution(ray_session, tmp_path, tiny_model_dir):
    cfg = _cfg(
        tmp_path,
        "ckpt",
        f"evaluate.model={tiny_model_dir}",
        "evaluate.limit=3",
        "evaluate.max_new_tokens=8",
        "evaluate.batch_size=2",
    )
    run = RunDir.from_config(cfg)
    res = evaluate(cfg, run)
    d = os.path.join(res.path, "humaneval")
    samples = _read(os.path.join(d, "samples.jsonl"))
    results = _read(os.path.join(d, "results.jsonl"))
    summary = json.load(open(os.path.join(d, "summary.json")))
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(
        isinstance(s["completion"], str) and s["raw"].startswith(s["completion"]) for s in samples
    )
    assert all(set(r) >= {"passed", "result", "duration_s"} for r in results)
    assert summary["problems"] == 3 and 0.0 <= summary["pass@1"] <= 1.0
    assert res.success["counts"]["humaneval_samples"] == 3
    assert evaluate(cfg, run).skipped  # unchanged config and checkpoint: up to date

    # The samples file is accepted as-is by the execution-only path.
    cfg2 = _cfg(tmp_path, "exec", f"evaluate.samples={os.path.join(d, 'samples.jsonl')}")
    res2 = evaluate(cfg2, RunDir.from_config(cfg2))
    again = _read(os.path.join(res2.path, "humaneval", "results.jsonl"))
    assert [(r["task_id"], r["passed"]) for r in again] == [
        (r["task_id"], r["passed"]) for r in results
    ]


def test_endpoint_generation_split_and_grading(ray_session, tmp_path):
    by_prompt = {p.prompt: p for p in load_humaneval()[:4]}
    stops_sent = []

    def responder(kind, body):
        if kind == "chat":
            return '{"score": 7, "rationale": "reads well"}'
        stops_sent.append(body.get("stop"))
        p = by_prompt[body["prompt"]]
        # Canonical body for even ids, a wrong one for odd; trailing junk must be cut off.
        body_text = (
            p.canonical_solution if int(p.task_id.split("/")[1]) % 2 == 0 else "    return None\n"
        )
        return body_text + "\n\ndef unrelated():\n    pass\n"

    with OpenAITestServer(responder) as srv:
        cfg = _cfg(
            tmp_path,
            "endpoint",
            f"evaluate.endpoint={srv.base_url}",
            "evaluate.limit=4",
            "evaluate.llm_grading=true",
            f"llm.base_url={srv.base_url}",
        )
        run = RunDir.from_config(cfg)
        os.makedirs(run.path("decontam"))
        split = {
            "similar": ["HumanEval/0", "HumanEval/1"],
            "non_similar": ["HumanEval/2", "HumanEval/3"],
        }
        with open(run.path("decontam", "humaneval_split.json"), "w") as f:
            json.dump(split, f)
        res = evaluate(cfg, run)
        assert srv.calls["completion"] == 4
    # every stop sequence goes to a server that is not OpenAI's (no 4-stop cap)
    assert stops_sent == [list(STOP_SEQUENCES)] * 4
    d = os.path.join(res.path, "humaneval")
    samples = _read(os.path.join(d, "samples.jsonl"))
    assert not any("unrelated" in s["completion"] for s in samples)
    results = _read(os.path.join(d, "results.jsonl"))
    assert [r["passed"] for r in results] == [True, False, True, False]
    assert all(r["grade"] == 7 for r in results)
    summary = json.load(open(os.path.join(d, "summary.json")))
    assert summary["pass@1"] == pytest.approx(0.5)
    assert summary["split"]["similar"] == {"problems": 2, "pass@1": pytest.approx(0.5)}
    assert summary["grading"]["graded"] == 4 and summary["grading"]["mean_grade"] == 7


def test_only_openais_own_api_gets_four_stops():
    from phi_ray.evaluate.generate import api_stops

    assert api_stops("https://api.openai.com/v1") == list(STOP_SEQUENCES[:4])
    assert api_stops("http://127.0.0.1:8000/v1") == list(STOP_SEQUENCES)
    assert len(STOP_SEQUENCES) > 4
    # a host that merely contains the name is not OpenAI's
    assert api_stops("http://api.openai.com.example.org/v1") == list(STOP_SEQUENCES)


def test_clear_errors(tmp_path):
    cfg = _cfg(tmp_path, "nothing")
    with pytest.raises(FileNotFoundError, match="--model DIR, --endpoint URL or --samples FILE"):
        evaluate(cfg, RunDir.from_config(cfg))
    bad = tmp_path / "samples.jsonl"
    bad.write_text(json.dumps({"task_id": "mbpp/11", "completion": "pass"}) + "\n")
    cfg = _cfg(tmp_path, "bad", f"evaluate.samples={bad}")
    with pytest.raises(ValueError, match="belong to no configured benchmark"):
        evaluate(cfg, RunDir.from_config(cfg))


def test_stop_criterion_per_row(tokenizer):
    import torch

    from phi_ray.evaluate.generate import _StopOnStrings

    prompt = tokenizer(["def f(x):\n"], return_tensors="pt")["input_ids"]
    rows = ["    return x\ndef g", "    y = x + 1\n    return"]
    ids = [prompt[0].tolist() + tokenizer(r)["input_ids"] for r in rows]
    width = max(map(len, ids))
    batch = torch.tensor([[tokenizer.eos_token_id] * (width - len(i)) + i for i in ids])
    stop = _StopOnStrings(tokenizer, STOP_SEQUENCES, batch.shape[1] - 8)
    assert stop(batch, None).tolist() == [True, False]
    # A stop sequence inside the prompt does not count.
    stop = _StopOnStrings(tokenizer, ["def f"], prompt.shape[1])
    assert stop(torch.tensor([ids[1]]), None).tolist() == [False]


def test_generation_resumes_from_its_log(tmp_path):
    from phi_ray.evaluate.generate import ResumeLog, generate_endpoint

    problems = load_humaneval()[:3]
    log_path = str(tmp_path / "gen.jsonl")
    ResumeLog(log_path).add(
        [{"task_id": "HumanEval/0", "sample": 0, "completion": "x", "raw": "x"}]
    )
    with open(log_path, "a") as f:
        f.write('{"task_id": "HumanEval/1", "sam')  # a line torn by a crash
    with OpenAITestServer() as srv:
        ecfg = load_config("tiny", [f"evaluate.endpoint={srv.base_url}"]).evaluate
        done = generate_endpoint(srv.base_url, problems, ecfg, 0, ResumeLog(log_path))
        assert srv.calls["completion"] == 2  # HumanEval/0 was not asked again
    assert done[("HumanEval/0", 0)]["completion"] == "x"
    assert done[("HumanEval/2", 0)]["completion"] == "    pass\n"
    assert len(ResumeLog(log_path).rows) == 3


@pytest.mark.gpu
def test_checkpoint_generation_on_gpu(tiny_model_dir):
    from phi_ray.evaluate.generate import HFGenerator

    gen = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 0.95, "stops": STOP_SEQUENCES}
    prompts = [p.prompt for p in load_humaneval()[:4]]
    gpu = HFGenerator(tiny_model_dir, gen, device="cuda").generate(prompts, seed=0)
    assert len(gpu) == 4 and all(isinstance(t, str) for t in gpu)
