"""The Serve app on 127.0.0.1: the openai client, /v1/quality, load, bad input, fuzzing.

Serve starts once for the module (a tiny phi model and a tiny classifier, with an API
key), plus a second app whose weights are corrupt and that has no classifier.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from conftest import stdlib_python_files

from phi_ray.config import EmbedderConfig, ServeConfig, load_config
from phi_ray.model.phi import build_model
from phi_ray.model.tokenizer import get_tokenizer
from phi_ray.serving.app import build_app
from phi_ray.serving.stage import wait_ready

KEY_ENV, KEY = "PHI_RAY_TEST_SERVE_KEY", "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "def fibonacci(n):\n    "
LIMIT = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_model(path: Path) -> None:
    build_model(load_config("tiny").model, seed=0).save_pretrained(path)
    get_tokenizer().save_pretrained(path)


def _save_classifier(path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    from phi_ray.quality.classifier import QualityClassifier, build_meta
    from phi_ray.quality.embed import Embedder

    cfg = EmbedderConfig(model="tiny-codegen", max_length=64, batch_size=4, tiny_hidden=32)
    emb = Embedder(cfg, seed=7)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_python_files(24)]
    y = np.array(['"""' in t for t in texts])
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(emb.embed(texts), y)
    QualityClassifier(forest, build_meta(emb, threshold=0.5), emb).save(str(path))


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    _save_model(root / "model")
    _save_classifier(root / "clf")
    broken = root / "broken"
    _save_model(broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    port = _free_port()
    scfg = ServeConfig(
        port=port,
        api_key_env=KEY_ENV,
        max_tokens_limit=LIMIT,
        max_batch_size=8,
        max_prompts=4,
        max_body_bytes=100_000,
        classifier_max_batch_size=16,
        num_cpus=0.5,
        classifier_num_cpus=0.25,
    )
    os.environ[KEY_ENV] = KEY  # build_app hands it to the ingress replicas
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(scfg, str(root / "model"), str(root / "clf"))
        serve.run(app, name="phi", route_prefix="/", blocking=False)
        serve.run(build_app(scfg, str(broken)), name="broken", route_prefix="/broken")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=300)
        yield {"url": url, "model": root / "model", "clf": root / "clf"}
    finally:
        os.environ.pop(KEY_ENV, None)
        serve.shutdown()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served["url"], headers=AUTH, timeout=120) as c:
        yield c


def test_openai_client_completions_streamed_and_not(client, served):
    r = client.completions.create(model="phi-1", prompt=PROMPT, max_tokens=16, temperature=0)
    text = r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 16
    # It is the model's own greedy continuation.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(served["model"])
    ids = get_tokenizer().encode(PROMPT)
    out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    assert text == get_tokenizer().decode(out[0, len(ids) :])

    chunks = list(
        client.completions.create(
            model="phi-1", prompt=PROMPT, max_tokens=16, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length"

    stop = text[5:8]
    for stream in (False, True):
        res = client.completions.create(
            model="phi-1", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop], stream=stream
        )
        parts = list(res) if stream else [res]
        got = "".join(p.choices[0].text for p in parts)
        assert got == text[: text.find(stop)] and stop not in got
        assert parts[-1].choices[0].finish_reason == "stop"


def test_prompt_lists_n_echo_and_seed(client):
    r = client.completions.create(
        model="phi-1", prompt=["import os\n", "x = "], max_tokens=4, n=2, echo=True, seed=5
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text.startswith("import os\n") and r.choices[3].text.startswith("x = ")
    again = client.completions.create(
        model="phi-1", prompt=["import os\n", "x = "], max_tokens=4, n=2, echo=True, seed=5
    )
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    tok = get_tokenizer()
    assert r.usage.prompt_tokens == len(tok.encode("import os\n")) + len(tok.encode("x = "))
    assert 4 <= r.usage.completion_tokens <= 16  # 4 choices of at most 4 tokens


def test_chat_completions(client):
    msgs = [{"role": "user", "content": PROMPT}]
    r = client.chat.completions.create(model="phi-1", messages=msgs, max_tokens=8, temperature=0)
    plain = client.completions.create(model="phi-1", prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == plain.choices[0].text
    chunks = client.chat.completions.create(
        model="phi-1", messages=msgs, max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].text


def test_models_health_and_openapi(client, served):
    assert [m.id for m in client.models.list().data] == ["phi-1"]
    h = httpx.get(served["url"] + "/healthz").json()
    assert h == {"status": "ok", "model": "ready", "classifier": "ready", "detail": None}
    spec = httpx.get(served["url"] + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/quality"} <= set(
        spec["paths"]
    )


def test_quality_scores_match_the_classifier(http, served):
    from phi_ray.quality.classifier import QualityClassifier

    codes = [p.read_text(encoding="utf-8") for p in stdlib_python_files(30)[24:28]]
    r = http.post("/v1/quality", json={"code": codes})
    assert r.status_code == 200, r.text
    body = r.json()
    probs, kept = QualityClassifier.load(str(served["clf"])).score(codes)
    np.testing.assert_allclose([d["score"] for d in body["data"]], probs, atol=1e-5)
    assert [d["kept"] for d in body["data"]] == kept.tolist() and body["threshold"] == 0.5
    one = http.post("/v1/quality", json={"code": codes[0]}).json()
    assert one["data"][0]["score"] == pytest.approx(body["data"][0]["score"], abs=1e-6)


def test_broken_model_and_missing_classifier_say_why(served):
    url = served["url"] + "/broken"
    deadline = time.monotonic() + 120
    while (h := httpx.get(url + "/healthz")).json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert h.status_code == 503 and h.json()["status"] == "error"
    assert "failed to load" in h.json()["detail"] and "broken" in h.json()["detail"]
    body = {"model": "phi-1", "prompt": "x", "max_tokens": 2}
    r = httpx.post(url + "/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/quality", json={"code": "x = 1"}, headers=AUTH)
    assert r.status_code == 503 and r.json()["error"]["code"] == "classifier_not_loaded"


def test_api_key(served):
    body = {"model": "phi-1", "prompt": "x", "max_tokens": 1}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(served["url"] + "/v1/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=served["url"] + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(served["url"] + "/healthz").status_code == 200  # no key needed


C = {"model": "phi-1", "prompt": "x", "max_tokens": 2}
BAD = [
    ("invalid json", "/v1/completions", b'{"model": "phi-1", "prompt": ', 400, None),
    ("not an object", "/v1/completions", [1, 2], 400, None),
    ("no body", "/v1/completions", None, 400, None),
    ("max_tokens type", "/v1/completions", {**C, "max_tokens": "2"}, 400, "max_tokens"),
    ("prompt type", "/v1/completions", {**C, "prompt": 7}, 400, "prompt"),
    ("unknown model", "/v1/completions", {**C, "model": "gpt-4"}, 404, "model"),
    ("empty prompt", "/v1/completions", {**C, "prompt": ""}, 400, "prompt"),
    ("empty prompt list", "/v1/completions", {**C, "prompt": []}, 400, "prompt"),
    ("prompt too long", "/v1/completions", {**C, "prompt": "x " * 600}, 400, "prompt"),
    (
        "context exceeded",
        "/v1/completions",
        {**C, "prompt": "x " * 240, "max_tokens": 30},
        400,
        "max_tokens",
    ),
    ("max_tokens over limit", "/v1/completions", {**C, "max_tokens": LIMIT + 1}, 400, "max_tokens"),
    ("max_tokens zero", "/v1/completions", {**C, "max_tokens": 0}, 400, "max_tokens"),
    ("negative temperature", "/v1/completions", {**C, "temperature": -0.5}, 400, "temperature"),
    ("top_p zero", "/v1/completions", {**C, "top_p": 0}, 400, "top_p"),
    ("n too big", "/v1/completions", {**C, "n": 9}, 400, "n"),
    ("too many stops", "/v1/completions", {**C, "stop": list("abcde")}, 400, "stop"),
    ("logprobs", "/v1/completions", {**C, "logprobs": 1}, 400, "logprobs"),
    ("oversized body", "/v1/completions", {**C, "prompt": "x" * 200_000}, 413, None),
    (
        "chat no messages",
        "/v1/chat/completions",
        {"model": "phi-1", "messages": []},
        400,
        "messages",
    ),
    (
        "chat bad role",
        "/v1/chat/completions",
        {"model": "phi-1", "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    ("quality empty list", "/v1/quality", {"code": []}, 400, "code"),
    ("quality wrong type", "/v1/quality", {"code": 5}, 400, "code"),
    ("quality too many", "/v1/quality", {"code": ["x"] * 17}, 400, "code"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_input_gets_its_4xx(http, path, body, status, param):
    if isinstance(body, bytes) or body is None:
        r = http.post(path, content=body or b"", headers={"content-type": "application/json"})
    else:
        r = http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param


def test_chunked_oversized_body_and_wrong_routes(http):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000

    r = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]
    assert http.get("/v1/completions").status_code == 405
    assert http.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
    assert http.get("/healthz").status_code == 200  # and the server is still healthy


def test_64_concurrent_clients_10_requests_each(served):
    def client_session(k: int) -> list[int]:
        codes = []
        with httpx.Client(base_url=served["url"], headers=AUTH, timeout=300) as c:
            for i in range(10):
                body = {"model": "phi-1", "prompt": f"x{k}_{i} = ", "max_tokens": 2}
                r = c.post("/v1/completions", json={**body, "temperature": 0.5 * (i % 2)})
                ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
                codes.append(r.status_code if ok else -r.status_code)
        return codes

    with ThreadPoolExecutor(64) as pool:
        results = [c for codes in pool.map(client_session, range(64)) for c in codes]
    assert len(results) == 640 and set(results) == {200}


def test_schemathesis_finds_no_server_error(served):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(served["url"] + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 5
    t0, calls = time.monotonic(), []
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=8,
                deadline=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def fuzz(case):
                resp = case.call(base_url=served["url"], headers=AUTH, timeout=60)
                calls.append((case.method, case.path, resp.status_code))
                case.validate_response(resp, checks=[not_a_server_error])

            try:
                fuzz()
            except Unsatisfiable:  # GET routes without parameters have no negative cases
                assert mode == GenerationMode.NEGATIVE and op.method.upper() == "GET"
    posts = [c for c in calls if c[0] == "POST"]
    assert len(posts) >= 30 and {c[2] for c in posts} & {200} and {c[2] for c in posts} & {400}
    assert time.monotonic() - t0 < 120
