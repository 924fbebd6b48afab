"""``phi-ray serve`` on vLLM through Ray Serve LLM, as a user runs it on a GPU host.

A tiny model exported as pretrain exports it, a real quality classifier, ``phi-ray serve``
as a subprocess with its own local Ray, the ``openai`` client: completions with logprobs,
echo and stop lists (what lm-eval sends), the classifier endpoint beside it in the same
application, and the served prompt logprobs against transformers in-process.

Needs a CUDA device and the ``vllm`` extra (``pip install -e '.[vllm]'``): skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from phi_ray.config import load_config
from tests.serving.kit import free_port, save_classifier, serve_command, serve_env

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs the vllm extra"),
]
STOPS = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<|endoftext|>", "\n\n"]


def _export(path: Path) -> None:
    from phi_ray.model.phi import build_model
    from phi_ray.train.checkpoint import export_hf

    mcfg = load_config("tiny").model
    export_hf(build_model(mcfg, "cpu", seed=0).state_dict(), mcfg, str(path))


@pytest.fixture(scope="module")
def vllm_serve(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-serve")
    _export(root / "model")
    save_classifier(root / "clf")
    port = free_port()
    cmd = [*serve_command(root / "model", root, port), "--classifier", str(root / "clf")]
    # engine auto: CUDA and vLLM are here, so this must be the vLLM application
    for s in ("serve.gpu_memory_utilization=0.3", "serve.enforce_eager=true"):
        cmd += ["--set", s]
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(
        cmd, env=serve_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 540
        while "phi-ray serve:" not in (root / "serve.log").read_text():  # printed once ready
            assert proc.poll() is None, (root / "serve.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "phi-ray serve (vLLM) did not come up"
            time.sleep(2)
        yield {"url": url, "model": root / "model", "log": root / "serve.log"}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_vllm_serve_completions_logprobs_echo_stops_and_classifier(vllm_serve):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url = vllm_serve["url"]
    # the vLLM application: Ray's LLMServer behind our ingress, not the transformers one
    health = httpx.get(url + "/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["classifier"] == "ready", health
    assert httpx.get(url + "/health", timeout=30).status_code == 200
    assert "on vLLM (Ray Serve LLM)" in vllm_serve["log"].read_text()

    client = openai.OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["phi-1"]

    tok = AutoTokenizer.from_pretrained(vllm_serve["model"])
    prompt = "def add(a, b):\n    return a + b\n"
    ids = tok.encode(prompt)
    # lm-eval's loglikelihood request: echo, one generated token, prompt logprobs
    r = client.completions.create(
        model="phi-1", prompt=prompt, max_tokens=1, echo=True, logprobs=2, temperature=0
    )
    lp = r.choices[0].logprobs
    assert r.choices[0].text.startswith(prompt)
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    assert all(len(t) >= 1 for t in lp.top_logprobs[1:])
    model = AutoModelForCausalLM.from_pretrained(vllm_serve["model"], dtype=torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits.float().log_softmax(-1)[0]
    want = [ref[i - 1, ids[i]].item() for i in range(1, len(ids))]
    got = lp.token_logprobs[1 : len(ids)]
    assert np.allclose(got, want, atol=2e-2), (got, want)

    # token-id prompts, a long stop list, greedy: the text never contains a stop sequence
    r = client.completions.create(
        model="phi-1", prompt=[ids, tok.encode("x = ")], max_tokens=24, stop=STOPS, temperature=0
    )
    assert len(r.choices) == 2
    for c in r.choices:
        assert not any(s in c.text for s in STOPS), c.text
        assert c.finish_reason in ("stop", "length")

    # the classifier deployment in the same application
    codes = [prompt, "import os\nprint(os.getcwd())\n"]
    q = httpx.post(url + "/v1/quality", json={"code": codes}, timeout=120)
    assert q.status_code == 200, q.text
    body = q.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(0.0 <= d["score"] <= 1.0 for d in body["data"])
    assert httpx.post(url + "/v1/quality", json={"code": []}, timeout=60).status_code == 400
    info = httpx.get(url + "/tokenizer_info", timeout=60).json()
    assert info["tokenizer_class"] == "CodeGenTokenizer" and info["eos_token"] == "<|endoftext|>"
