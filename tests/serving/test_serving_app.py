"""The Serve app on 127.0.0.1: the openai client, /v1/quality, load, bad input, fuzzing.

Serve starts once for the module (a tiny phi model and a tiny classifier, with an API
key), plus a second app whose weights are corrupt and that has no classifier.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from conftest import stdlib_python_files

from phi_ray.config import ServeConfig, load_config
from phi_ray.model.phi import build_model
from phi_ray.model.tokenizer import get_tokenizer, save_tokenizer
from phi_ray.serving.app import build_app
from phi_ray.serving.stage import wait_ready
from tests.serving.kit import free_port, save_classifier

KEY_ENV, KEY = "PHI_RAY_TEST_SERVE_KEY", "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "def fibonacci(n):\n    "
LIMIT = 32


def _save_model(path: Path) -> None:
    build_model(load_config("tiny").model, seed=0).save_pretrained(path)
    save_tokenizer(get_tokenizer(), str(path))  # as pretrain's export writes it


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    _save_model(root / "model")
    save_classifier(root / "clf")
    broken = root / "broken"
    _save_model(broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    port = free_port()
    scfg = ServeConfig(
        engine="transformers",  # this module tests that engine (vLLM: test_serving_vllm_gpu)
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
    ("negative temperature", "/v1/completions", {**C, "temperature": -0.5}, 400, "temperature"),
    ("top_p zero", "/v1/completions", {**C, "top_p": 0}, 400, "top_p"),
    ("n too big", "/v1/completions", {**C, "n": 129}, 400, "n"),
    ("too many stops", "/v1/completions", {**C, "stop": ["s"] * 257}, 400, "stop"),
    ("stop too long", "/v1/completions", {**C, "stop": ["s" * 1025]}, 400, "stop"),
    ("logprobs over 20", "/v1/completions", {**C, "logprobs": 21}, 400, "logprobs"),
    ("max_tokens zero without echo", "/v1/completions", {**C, "max_tokens": 0}, 400, "max_tokens"),
    ("token id out of vocab", "/v1/completions", {**C, "prompt": [1, 60000]}, 400, "prompt"),
    ("negative token id", "/v1/completions", {**C, "prompt": [[1], [-1]]}, 400, "prompt[1]"),
    ("empty token list", "/v1/completions", {**C, "prompt": [[1], []]}, 400, "prompt[1]"),
    ("mixed prompt list", "/v1/completions", {**C, "prompt": ["a", 1]}, 400, "prompt"),
    ("unknown parameter", "/v1/completions", {**C, "frobnicate": 1}, 400, "frobnicate"),
    ("penalty", "/v1/completions", {**C, "presence_penalty": 0.5}, 400, "presence_penalty"),
    ("best_of", "/v1/completions", {**C, "best_of": 3}, 400, "best_of"),
    ("suffix", "/v1/completions", {**C, "suffix": "x"}, 400, "suffix"),
    (
        "temperature nan",
        "/v1/completions",
        b'{"model":"phi-1","prompt":"x","temperature":NaN}',
        400,
        "temperature",
    ),
    (
        "top_p infinity",
        "/v1/completions",
        b'{"model":"phi-1","prompt":"x","top_p":Infinity}',
        400,
        "top_p",
    ),
    ("huge max_tokens", "/v1/completions", {**C, "max_tokens": 10**30}, 400, "max_tokens"),
    ("seed over 63 bits", "/v1/completions", {**C, "seed": 2**64}, 400, "seed"),
    (
        "chat logprobs",
        "/v1/chat/completions",
        {"model": "phi-1", "messages": [{"role": "user", "content": "x"}], "logprobs": True},
        400,
        "logprobs",
    ),
    ("detokenize out of vocab", "/detokenize", {"tokens": [99999]}, 400, "tokens"),
    ("tokenize wrong model", "/tokenize", {"model": "gpt-4", "prompt": "x"}, 404, "model"),
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


# ------------------------------------------------------------------ vLLM's API, lm-eval's shapes


def _ref_logprobs(model_dir, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, scored in-process by transformers, unpadded."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits.float().log_softmax(-1)[0]
    return [lp[i - 1, t].item() for i, t in enumerate(ids) if i]


def test_echo_logprobs_as_lm_eval_asks_match_transformers(http, served):
    """lm-eval's loglikelihood request: token ids, echo, logprobs 1, max_tokens 1 (and 0)."""
    tok = get_tokenizer()
    seqs = [
        tok.encode(t) for t in ("def add(a, b):\n    return a + b\n", "import os\nx = 1", "a = b")
    ]
    body = {"model": "phi-1", "prompt": seqs, "echo": True, "logprobs": 1, "temperature": 0}
    r = http.post("/v1/completions", json={**body, "max_tokens": 1, "seed": 1234})
    assert r.status_code == 200, r.text
    zero = http.post("/v1/completions", json={**body, "max_tokens": 0}).json()
    for ids, choice, z in zip(seqs, r.json()["choices"], zero["choices"], strict=True):
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(ids) + 1 and lp["token_logprobs"][0] is None
        assert lp["top_logprobs"][0] is None and lp["text_offset"][0] == 0
        got = lp["token_logprobs"][1 : len(ids)]
        assert (
            max(abs(a - b) for a, b in zip(got, _ref_logprobs(served["model"], ids), strict=True))
            < 1e-4
        )
        assert choice["text"].startswith(tok.decode(ids))
        # Each top_logprobs entry has the top 1 and the token itself; the last is generated.
        for t, v, top in zip(
            lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:], strict=True
        ):
            assert top[t] == v and len(top) <= 2 and max(top.values()) >= v
        assert max(lp["top_logprobs"][-1].values()) == lp["token_logprobs"][-1]  # greedy
        assert z["logprobs"]["token_logprobs"] == lp["token_logprobs"][:-1]
        assert z["text"] == tok.decode(ids) and z["finish_reason"] == "length"
    assert zero["usage"]["completion_tokens"] == 0


def test_completion_logprobs_top_k_and_streamed(http):
    body = {"model": "phi-1", "prompt": PROMPT, "max_tokens": 6, "logprobs": 3, "temperature": 0}
    r = http.post("/v1/completions", json=body).json()["choices"][0]
    lp = r["logprobs"]
    assert "".join(lp["tokens"]) == r["text"] and len(lp["tokens"]) == 6
    assert lp["text_offset"] == [sum(map(len, lp["tokens"][:i])) for i in range(6)]
    for v, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert len(top) == 3 and max(top.values()) == v  # greedy: the token is the top one
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
        chunks = [line[6:] for line in s.iter_lines() if line.startswith("data: {")]
    parts = [json.loads(c)["choices"][0] for c in chunks]
    assert "".join(p["text"] for p in parts) == r["text"]
    assert [t for p in parts if p["logprobs"] for t in p["logprobs"]["tokens"]] == lp["tokens"]


def test_prompt_forms_n_beyond_the_batch_and_long_stop_lists(http):
    tok = get_tokenizer()
    base = {"model": "phi-1", "max_tokens": 4, "temperature": 0}
    text = http.post("/v1/completions", json={**base, "prompt": "x = "}).json()["choices"][0]
    for prompt in ("x = ", ["x = "], tok.encode("x = "), [tok.encode("x = ")]):
        r = http.post("/v1/completions", json={**base, "prompt": prompt})
        assert r.json()["choices"][0]["text"] == text["text"], prompt
    # n = 10 choices with a batch of 8 sequences: split into two model calls.
    r = http.post(
        "/v1/completions", json={**base, "prompt": "x = ", "n": 10, "temperature": 1, "seed": 3}
    )
    assert [c["index"] for c in r.json()["choices"]] == list(range(10))
    again = http.post(
        "/v1/completions", json={**base, "prompt": "x = ", "n": 10, "temperature": 1, "seed": 3}
    )
    assert [c["text"] for c in again.json()["choices"]] == [c["text"] for c in r.json()["choices"]]
    # 200 long stops (BigCode's eight among them): no cap at 4, and the cut is still exact.
    full = http.post("/v1/completions", json={**base, "prompt": PROMPT, "max_tokens": 16}).json()
    full = full["choices"][0]["text"]
    stops = [f"\nnever{i}" * 20 for i in range(192)] + [
        "\nclass",
        "\ndef",
        "\n#",
        "\nif",
        "\nprint",
        full[5:8],
        "\n```",
        "<file_sep>",
    ]
    for stream in (False, True):
        r = http.post(
            "/v1/completions",
            json={**base, "prompt": PROMPT, "max_tokens": 16, "stop": stops, "stream": stream},
        )
        assert r.status_code == 200
        if stream:
            got = "".join(
                json.loads(line[6:])["choices"][0]["text"]
                for line in r.text.splitlines()
                if line.startswith("data: {")
            )
        else:
            got = r.json()["choices"][0]["text"]
        cut = min((i for s in stops if (i := full.find(s)) >= 0), default=len(full))
        assert got == full[:cut]


def test_streamed_n_beyond_the_batch_with_echo_and_logprobs(client, http):
    """Token-id prompts, n=5 x 2 prompts (10 sequences, batch 8), echo + logprobs, streamed:
    each choice's chunks add up to its non-streamed choice."""
    tok = get_tokenizer()
    prompts = [tok.encode("x = "), tok.encode("def f():")]
    kw = {"model": "phi-1", "prompt": prompts, "max_tokens": 3, "n": 5, "echo": True}
    kw |= {"logprobs": 1, "temperature": 0}
    full = client.completions.create(**kw)  # the openai client parses the logprobs too
    assert len(full.choices) == 10 and full.choices[7].text.startswith("def f():")
    assert full.choices[7].logprobs.token_logprobs[0] is None
    with http.stream("POST", "/v1/completions", json={**kw, "stream": True}) as s:
        lines = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]
    text, tokens = [""] * 10, [[] for _ in range(10)]
    for c in (line["choices"][0] for line in lines):
        text[c["index"]] += c["text"]
        tokens[c["index"]] += c["logprobs"]["tokens"] if c["logprobs"] else []
    assert text == [c.text for c in full.choices]
    assert tokens == [c.logprobs.tokens for c in full.choices]


def test_tokenizer_health_version_and_metrics(http, served):
    tok = get_tokenizer()
    r = http.post("/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}).json()
    assert r["tokens"] == tok.encode(PROMPT) and r["count"] == len(r["tokens"])
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": PROMPT}
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 256
    # the class the export writes, which is what vLLM's /tokenizer_info names too (the
    # class of the tokenizer it loaded), not transformers 5's generic TokenizersBackend
    assert info["tokenizer_class"] == "CodeGenTokenizer"
    eos = http.post("/tokenize", json={"prompt": "<|endoftext|>", "add_special_tokens": False})
    assert eos.json()["tokens"] == [50256]  # lm-eval's remote tokenizer finds EOS this way
    assert httpx.get(served["url"] + "/health").status_code == 200
    assert httpx.get(served["url"] + "/broken/health").status_code == 503
    assert "version" in httpx.get(served["url"] + "/version").json()
    before = _metrics(served["url"])
    body = {"model": "phi-1", "prompt": "x = ", "max_tokens": 3, "n": 2, "temperature": 0}
    http.post("/v1/completions", json=body)
    after = _metrics(served["url"])
    key = 'phi_ray_requests_total{route="/v1/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    n_prompt = len(tok.encode("x = "))
    assert after["phi_ray_prompt_tokens_total"] - before["phi_ray_prompt_tokens_total"] == n_prompt
    assert after["phi_ray_generation_tokens_total"] - before["phi_ray_generation_tokens_total"] == 6
    assert after["phi_ray_batch_size_count"] > before["phi_ray_batch_size_count"]
    assert 'phi_ray_request_latency_seconds_count{route="/v1/completions"}' in after
    assert after["phi_ray_sequences_waiting"] == 0 and after["phi_ray_model_ready"] == 1


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    rows = [line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#"]
    return {k: float(v) for k, v in rows}


# ------------------------------------------------------------------ hostile input: never a 5xx

TINY_TEMPERATURES = [1e-300, 5e-324, 1e-40, 1e-6, 9.9e-6]


def test_tiny_temperatures_are_greedy_even_batched_with_others(served):
    greedy = {"model": "phi-1", "prompt": PROMPT, "max_tokens": 6, "temperature": 0}

    def post(t):
        with httpx.Client(base_url=served["url"], headers=AUTH, timeout=120) as c:
            return c.post("/v1/completions", json={**greedy, "temperature": t})

    with ThreadPoolExecutor(8) as pool:  # concurrent: they share dynamic batches
        res = list(pool.map(post, [0.0, *TINY_TEMPERATURES, 1.0, 0.7]))
    assert [r.status_code for r in res] == [200] * len(res)
    texts = [r.json()["choices"][0]["text"] for r in res]
    assert texts[1 : 1 + len(TINY_TEMPERATURES)] == [texts[0]] * len(TINY_TEMPERATURES)


S = "\ud800"  # a lone surrogate: valid JSON ("\ud800"), not valid Unicode
MSG = [{"role": "user", "content": "x"}]
HOSTILE = [
    ("/v1/completions", {**C, "model": S}, "model"),
    ("/v1/completions", {**C, "prompt": "ab" + S}, "prompt"),
    ("/v1/completions", {**C, "prompt": ["ok", "\udfff"]}, "prompt[1]"),
    ("/v1/completions", {**C, "stop": ["\n", S]}, "stop[1]"),
    ("/v1/completions", {**C, "stop": S}, "stop"),
    ("/v1/completions", {**C, "user": S}, "user"),
    ("/v1/completions", {**C, S: 1}, None),
    (
        "/v1/chat/completions",
        {"model": "phi-1", "messages": [{"role": "user", "content": S}]},
        "messages[0].content",
    ),
    ("/v1/chat/completions", {"model": S, "messages": MSG}, "model"),
    ("/v1/quality", {"code": ["x = 1", S]}, "code[1]"),
    ("/tokenize", {"prompt": S}, "prompt"),
    ("/tokenize", {"model": S, "prompt": "x"}, "model"),
]


@pytest.mark.parametrize(
    ("path", "body", "param"), HOSTILE, ids=[f"{h[0]}:{h[2]}" for h in HOSTILE]
)
def test_lone_surrogates_are_a_400_naming_the_field(http, path, body, param):
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as \ud800
    r = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    if param is not None:
        assert err["param"] == param and "surrogate" in err["message"]
    # The same text as raw bytes: UTF-8-encoded surrogates, and bytes that are not UTF-8.
    for bad in (b"\xed\xa0\x80", b"\xff\xfe"):
        r = http.post(
            path,
            content=raw.replace(b"\\ud800", bad).replace(b"\\udfff", bad),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, r.text


def test_fuzzed_hostile_bodies_get_no_5xx(http):
    """Random valid requests with one field swapped for hostile values: never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    hostile = st.one_of(
        st.text(
            alphabet=st.characters(codec=None, categories=["Cs", "Co", "Cc", "Zs", "Lo"]),
            max_size=8,
        ),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(
            [5e-324, 1e-300, -0.0, 2**63, -(2**63), 10**40, [], {}, None, [[]], [-1], [2**31]]
        ),
        st.lists(st.integers(-5, 60000), max_size=6),
        st.lists(st.text(max_size=3), max_size=5),
    )
    fields = [
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "logprobs",
        "echo",
        "best_of",
        "logit_bias",
        "stream",
    ]
    seen = []

    @given(field=st.sampled_from(fields), value=hostile, tokens=st.integers(0, 2))
    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(field, value, tokens):
        body = {
            "model": "phi-1",
            "prompt": "x",
            "max_tokens": tokens,
            "echo": tokens == 0,
            field: value,
        }
        raw = json.dumps(body, allow_nan=True).encode()
        r = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        seen.append(r.status_code)
        assert r.status_code < 500, (body, r.text)

    fuzz()
    assert 200 in seen and 400 in seen
