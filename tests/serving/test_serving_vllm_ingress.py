"""The vLLM application as Ray Serve runs it, on a CPU: everything but the vLLM engine.

``build_vllm_app`` with the real ``ray.serve.llm`` and vLLM 0.29.0 (the pinned extra),
deployed on real Ray Serve: Ray's ``LLMServer`` asks for a GPU and stays pending here, while
the ingress (Ray's ``OpenAiIngress`` + phi-ray's routes) and the real quality classifier
serve. ``make check-vllm-app`` runs it with vLLM from a cached overlay (vLLM's wheel without
its CUDA dependencies: importing its OpenAI protocol needs none of them); skipped where vLLM
is not importable, and on a GPU host (``test_serving_vllm_gpu.py`` runs the whole thing).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import time

import httpx
import numpy as np
import pytest
import torch
from conftest import stdlib_python_files

from phi_ray.config import EmbedderConfig, load_config

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or torch.cuda.is_available(),
    reason="needs vLLM importable (make check-vllm-app) on a host without a GPU",
)
KEY_ENV, KEY = "PHI_RAY_VLLM_TEST_KEY", "sk-vllm-test"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve
    from ray.serve.api import _run
    from sklearn.ensemble import RandomForestClassifier

    from phi_ray.model.phi import build_model
    from phi_ray.quality.classifier import QualityClassifier, build_meta
    from phi_ray.quality.embed import Embedder
    from phi_ray.serving.app import build_app
    from phi_ray.train.checkpoint import export_hf

    root = tmp_path_factory.mktemp("vllm-ingress")
    mcfg = load_config("tiny").model
    export_hf(build_model(mcfg, "cpu", seed=0).state_dict(), mcfg, str(root / "model"))
    cfg = EmbedderConfig(model="tiny-codegen", max_length=64, batch_size=4, tiny_hidden=32)
    emb = Embedder(cfg, seed=7)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_python_files(24)]
    y = np.array(['"""' in t for t in texts])
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(emb.embed(texts), y)
    QualityClassifier(forest, build_meta(emb, threshold=0.5), emb).save(str(root / "clf"))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scfg = load_config(
        "tiny",
        [
            "serve.engine=vllm",
            f"serve.api_key_env={KEY_ENV}",
            "serve.num_cpus=0.25",
            "serve.classifier_num_cpus=0.25",
        ],
    ).serve
    os.environ[KEY_ENV] = KEY  # handed to the ingress replicas through their runtime_env
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(scfg, str(root / "model"), str(root / "clf"))
        # not serve.run: that waits for every deployment, and LLMServer's GPU never comes
        _run(app, _blocking=False, name="phi-vllm", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                r = httpx.get(url + "/v1/models", headers=AUTH, timeout=30)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the vLLM app's ingress did not come up"
            time.sleep(2)
        yield {"url": url}
    finally:
        os.environ.pop(KEY_ENV, None)
        serve.shutdown()


def test_ingress_routes_beside_a_pending_llm_server(served):
    url = served["url"]
    models = httpx.get(url + "/v1/models", headers=AUTH, timeout=30).json()
    assert [m["id"] for m in models["data"]] == ["phi-1"]  # Ray's route, our model name
    # the classifier, the second deployment of the same application
    r = httpx.post(url + "/v1/quality", json={"code": ["x = 1\n", "def f():\n    pass\n"]},
                   headers=AUTH, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["index"] for d in body["data"]] == [0, 1] and body["threshold"] == 0.5
    assert all(0.0 <= d["score"] <= 1.0 for d in body["data"])
    # hostile cases: no key, empty, too many files, a lone surrogate
    assert httpx.post(url + "/v1/quality", json={"code": "x"}, timeout=30).status_code == 401
    bad = [
        ({"code": []}, "code must not be an empty list"),
        ({"code": ["x"] * 65}, "at most 64 files"),
        ({"code": ["x", "  "]}, "code[1] is empty"),
    ]
    for payload, msg in bad:
        r = httpx.post(url + "/v1/quality", json=payload, headers=AUTH, timeout=30)
        assert r.status_code == 400 and msg in r.json()["error"]["message"], r.text
    r = httpx.post(
        url + "/v1/quality",
        content=b'{"code": "\\ud800"}',
        headers={**AUTH, "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "code", r.text
    # what lm-eval's remote tokenizer reads: the class the export writes
    info = httpx.get(url + "/tokenizer_info", timeout=60).json()
    assert info["tokenizer_class"] == "CodeGenTokenizer" and info["model_max_length"] == 256
    # no GPU, so no LLMServer replica: "loading" (phi-ray serve keeps waiting), never "ok"
    h = httpx.get(url + "/healthz", timeout=60)
    assert h.status_code == 503 and h.json()["status"] == "loading", h.text
    assert h.json()["classifier"] == "ready"
    assert httpx.get(url + "/health", timeout=60).status_code == 503
