"""Red-team: an endpoint that answers without choices, or with choices of the wrong shape,
must not hang or crash evaluate's generation."""

from __future__ import annotations

import json
import threading

import pytest

from phi_ray.config import load_config
from phi_ray.evaluate.generate import ResumeLog, generate_endpoint
from phi_ray.evaluate.problems import load_humaneval
from phi_ray.llm.testserver import OpenAITestServer
from tests.http_kit import json_200_server


def _gen(url: str, problems, *sets: str, timeout_s: float = 30.0):
    """generate_endpoint in a thread: a hang is a test failure, not a stuck suite."""
    sets = (f"evaluate.endpoint={url}", "evaluate.n_samples=2", *sets)
    ecfg = load_config("tiny", list(sets)).evaluate
    out: dict = {}

    def go():
        try:
            out["done"] = generate_endpoint(url, problems, ecfg, 0, ResumeLog(None))
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), "generation hung"
    return out


def test_an_endpoint_that_answers_no_choices_is_an_error_not_an_endless_loop():
    # `while len(texts) < n` re-asked forever (paying each time) when choices came back empty.
    with OpenAITestServer() as srv:
        srv.fault_rate(1.0, kinds=("nochoices",))
        out = _gen(srv.base_url, load_humaneval()[:1])
        assert isinstance(out.get("error"), ConnectionError), out
        assert "no choices" in str(out["error"])
        assert srv.calls["completion"] <= 3


def test_choices_of_the_wrong_shape_are_empty_completions_not_a_crash():
    body = json.dumps(
        {"choices": [{"index": None, "text": 5}, {"text": ["x"]}], "model": "m"}
    ).encode()

    srv, _ = json_200_server(body)
    try:
        url = f"http://127.0.0.1:{srv.server_port}/v1"
        out = _gen(url, load_humaneval()[:1], "evaluate.endpoint_model=m")
    finally:
        srv.shutdown()
    if "error" in out:
        pytest.fail(f"generation raised {out['error']!r}")
    assert [r["completion"] for r in out["done"].values()] == ["", ""]
