"""The OpenAI-compatible test server: real HTTP, OpenAI-shaped answers, faults on demand."""

from __future__ import annotations

import httpx
import openai
import pytest

from phi_ray.llm.testserver import OpenAITestServer, count_tokens


def test_chat_completion_and_models_are_openai_shaped():
    def responder(kind, body):
        return f"{kind}:{body.get('prompt') or body['messages'][-1]['content']}"

    with OpenAITestServer(responder) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        chat = client.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hello"}]
        )
        assert chat.choices[0].message.content == "chat:hello"
        assert chat.usage.prompt_tokens == count_tokens("hello")
        assert chat.usage.completion_tokens == count_tokens("chat:hello")
        assert chat.model == "m1"
        comp = client.completions.create(model="m1", prompt=["a", "bb"], n=2)
        assert [c.text for c in comp.choices] == ["completion:a"] * 2 + ["completion:bb"] * 2
        assert [c.index for c in comp.choices] == [0, 1, 2, 3]
        assert [m.id for m in client.models.list()] == ["test-model"]
        assert srv.calls["chat"] == 1 and srv.calls["completion"] == 1
        assert srv.calls["models"] == 1 and srv.calls["ok"] == 2
        assert sorted(srv.paid.values()) == [1, 1]


def test_faults_are_injected_in_order_then_cleared():
    with OpenAITestServer(latency_s=0.0) as srv:
        url = f"{srv.base_url}/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
        srv.fault("429", retry_after=0.25)
        srv.fault("500")
        srv.fault("malformed")
        srv.fault("drop")
        with httpx.Client() as h:
            r = h.post(url, json=body)
            assert r.status_code == 429
            assert float(r.headers["retry-after"]) == 0.25
            assert r.headers["retry-after-ms"] == "250"
            assert h.post(url, json=body).status_code == 500
            r = h.post(url, json=body)
            assert (
                r.status_code == 200 and "garbled" in r.json()["choices"][0]["message"]["content"]
            )
            with pytest.raises(httpx.TransportError):
                h.post(url, json=body)
            assert h.post(url, json=body).status_code == 200
        for k in ("429", "500", "malformed", "drop"):
            assert srv.calls[f"fault:{k}"] == 1
        # malformed answers are paid (they carry usage); errors and drops are not
        assert srv.calls["ok"] == 2
        srv.fault_rate(1.0, kinds=("500",))
        with httpx.Client() as h:
            assert h.post(url, json=body).status_code == 500
            srv.clear_faults()
            assert h.post(url, json=body).status_code == 200


def test_api_key_is_enforced_when_set_and_unknown_routes_404():
    with OpenAITestServer(api_key="sekrit") as srv, httpx.Client() as h:
        assert h.get(f"{srv.base_url}/models").status_code == 401
        ok = h.get(f"{srv.base_url}/models", headers={"Authorization": "Bearer sekrit"})
        assert ok.status_code == 200
        assert (
            h.post(f"{srv.base_url}/nope", json={}, headers=ok.request.headers).status_code == 404
        )


def test_aimed_faults_billed_defects_and_max_tokens():
    def responder(kind, body):
        return "y" * 80  # 20 tokens

    with OpenAITestServer(responder, honor_max_tokens=True) as srv, httpx.Client() as h:
        url = f"{srv.base_url}/chat/completions"

        def ask(prompt: str, **kw) -> httpx.Response:
            msgs = [{"role": "user", "content": prompt}]
            return h.post(url, json={"model": "m", "messages": msgs, **kw})

        for kind in ("badjson", "nochoices", "nousage", "partial_usage", "403"):
            srv.fault_on(f"<{kind}>", kind)
        with pytest.raises(ValueError):
            ask("<badjson>").json()
        assert ask("<nochoices>").json()["choices"] == []
        assert "usage" not in ask("<nousage>").json()
        assert ask("<partial_usage>").json()["usage"] == {"prompt_tokens": 4}
        assert ask("<403>").status_code == 403
        assert ask("plain", max_tokens=5).json()["choices"][0]["message"]["content"] == "y" * 20
        # every defective 200 was billed, per prompt; the 403 was not
        assert srv.paid_by_prompt == {
            "<badjson>": 1, "<nochoices>": 1, "<nousage>": 1, "<partial_usage>": 1, "plain": 1
        }  # fmt: skip
        srv.honor_max_tokens = False
        assert len(ask("plain", max_tokens=5).json()["choices"][0]["message"]["content"]) == 80
