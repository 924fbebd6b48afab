"""The LLM client against the real local test server: retries, cache, repair, budgets, limits."""

from __future__ import annotations

import json
import sqlite3
import sys
import time

import pytest

from phi_ray.config import LLMConfig
from phi_ray.llm import BudgetExceeded, LLMClient, LLMError, ParseError, Request, run_batch
from phi_ray.llm.testserver import OpenAITestServer


def _cfg(srv, **kw) -> LLMConfig:
    base = dict(base_url=srv.base_url, model="gpt-4", backoff_base_s=0.001, backoff_max_s=0.01)
    return LLMConfig(**{**base, **kw})


def _reqs(n: int, prefix: str = "q") -> list[Request]:
    return [
        Request(f"{prefix}{i}", messages=[{"role": "user", "content": f"{prefix}{i}"}])
        for i in range(n)
    ]


def _json_score(kind, body):
    return json.dumps({"score": len(body["messages"][0]["content"]) % 6})


def _parse(text: str) -> int:
    try:
        return int(json.loads(text)["score"])
    except (ValueError, KeyError, TypeError) as e:
        raise ParseError(f"not JSON with a score: {e}") from None


def test_retries_each_fault_kind_and_pays_once(tmp_path):
    with OpenAITestServer(_json_score) as srv:
        for kind in ("429", "500", "drop", "slow", "malformed"):
            srv.fault(kind, times=2, retry_after=0.01, delay_s=0.02)
        with LLMClient(_cfg(srv), str(tmp_path), progress=False, use_ray=False) as llm:
            batch = llm.run_batch(_reqs(40), _parse)
        assert len(batch.results) == 40 and not batch.failures and not batch.pending
        assert {r.id: r.value for r in batch.results} == {
            f"q{i}": len(f"q{i}") % 6 for i in range(40)
        }
        s = batch.stats
        assert s["retry_429"] == 2 and s["retry_http"] == 2 and s["retry_connection"] == 2
        assert s["repairs"] == 2  # the two malformed answers were re-asked
        assert max(srv.paid.values()) == 1
        assert srv.calls["ok"] == s["api_calls"] == 42  # 40 + 2 repair calls
        assert s["cost_usd"] == pytest.approx(
            (srv.calls["prompt_tokens"] * 30 + srv.calls["completion_tokens"] * 60) / 1e6
        )


def test_retry_after_is_honoured_and_attempts_are_bounded(tmp_path):
    with OpenAITestServer(_json_score) as srv:
        srv.fault("429", retry_after=0.4)
        t0 = time.monotonic()
        with LLMClient(_cfg(srv), str(tmp_path / "a"), progress=False, use_ray=False) as llm:
            assert len(llm.run_batch(_reqs(1), _parse).results) == 1
        assert time.monotonic() - t0 >= 0.4
        srv.fault("500", times=50)
        cfg = _cfg(srv, max_attempts=3)
        with LLMClient(cfg, str(tmp_path / "b"), progress=False, use_ray=False) as llm:
            batch = llm.run_batch(_reqs(1, "z"), _parse)
        assert [f.reason for f in batch.failures] == ["retries_exhausted"]
        assert "http 500" in batch.failures[0].error
        assert srv.calls["fault:500"] == 3  # exactly max_attempts tries


def test_timeouts_are_retried_and_bad_requests_are_not(tmp_path):
    with OpenAITestServer(_json_score) as srv:
        srv.fault("slow", delay_s=1.5)
        srv.fault("400")
        cfg = _cfg(srv, timeout_s=0.3, max_concurrency=1)
        with LLMClient(cfg, str(tmp_path), progress=False, use_ray=False) as llm:
            batch = llm.run_batch(_reqs(2), _parse)
        assert batch.stats["retry_timeout"] == 1
        assert len(batch.results) == 1
        assert [(f.id, f.reason) for f in batch.failures] == [("q1", "http_400")]


def test_a_wrong_api_key_stops_everything_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with OpenAITestServer(_json_score, api_key="right") as srv:
        llm = LLMClient(_cfg(srv), str(tmp_path), progress=False, use_ray=False)
        with llm, pytest.raises(LLMError, match=r"answered 401.*OPENAI_API_KEY"):
            llm.run_batch(_reqs(5), _parse)
        assert srv.calls["requests"] <= 5


def test_cache_is_written_before_parsing_and_answers_reruns(tmp_path):
    with OpenAITestServer(_json_score) as srv:
        cfg = _cfg(srv, repair_attempts=0)

        def reject(text):
            raise ParseError("never good enough")

        batch = run_batch(cfg, _reqs(5), reject, str(tmp_path), progress=False, use_ray=False)
        assert [f.reason for f in batch.failures] == ["parse"] * 5
        assert batch.failures[0].text  # the rejected answer is kept for inspection
        db = sqlite3.connect(tmp_path / "llm_cache.sqlite")
        assert db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 5
        before = srv.calls["requests"]
        again = run_batch(cfg, _reqs(5), _parse, str(tmp_path), progress=False, use_ray=False)
        assert srv.calls["requests"] == before  # nothing paid twice
        assert len(again.results) == 5 and all(r.cached for r in again.results)
        assert again.stats["cache_hits"] == 5 and again.stats.get("api_calls", 0) == 0
        # a new prompt version is a new question
        bumped = [Request(r.id, messages=r.messages, prompt_version="v2") for r in _reqs(5)]
        run_batch(cfg, bumped, _parse, str(tmp_path), progress=False, use_ray=False)
        assert srv.calls["requests"] == before + 5


def test_repair_prompt_fixes_an_unparseable_answer(tmp_path):
    def responder(kind, body):
        last = body["messages"][-1]["content"]
        return '{"score": 4}' if "could not be used" in last else "four, I think"

    with OpenAITestServer(responder) as srv:
        batch = run_batch(_cfg(srv), _reqs(3), _parse, str(tmp_path), progress=False, use_ray=False)
    assert [r.value for r in batch.results] == [4, 4, 4]
    assert all(r.repairs == 1 and r.attempts == 2 for r in batch.results)
    assert batch.stats["repairs"] == 3


def test_token_budget_stops_cleanly_and_a_larger_budget_finishes(tmp_path):
    with OpenAITestServer(_json_score) as srv:
        # each call costs 4 tokens but reserves ~9 + 16 first: 80 allows some calls, not 30
        cfg = _cfg(srv, budget_tokens=80, max_tokens=16, max_concurrency=4)
        batch = run_batch(cfg, _reqs(30), _parse, str(tmp_path), progress=False, use_ray=False)
        assert batch.stopped_by_budget and "token budget" in batch.budget_message
        assert 0 < len(batch.results) < 30 and len(batch.pending) == 30 - len(batch.results)
        assert batch.stats["total_tokens_all_runs"] <= 80
        with pytest.raises(BudgetExceeded, match=r"larger llm\.budget") as e:
            batch.raise_if_budget("test")
        assert e.value.counts["pending"] == len(batch.pending)
        # the same budget again counts what earlier runs spent: it still stops within it
        same = run_batch(cfg, _reqs(30), _parse, str(tmp_path), progress=False, use_ray=False)
        assert same.stopped_by_budget and same.stats["total_tokens_all_runs"] <= 80
        assert same.stats["cache_hits"] == len(batch.results)
        more = _cfg(srv, budget_tokens=100_000, max_tokens=16, max_concurrency=4)
        done = run_batch(more, _reqs(30), _parse, str(tmp_path), progress=False, use_ray=False)
        assert len(done.results) == 30 and not done.stopped_by_budget
        assert done.stats["cache_hits"] == len(same.results)
        assert max(srv.paid.values()) == 1 and srv.calls["ok"] == 30


def test_dollar_budget_needs_a_price_and_stops(tmp_path):
    with OpenAITestServer(_json_score) as srv:
        with pytest.raises(LLMError, match=r"llm\.prices has no entry"):
            LLMClient(_cfg(srv, model="mystery", budget_usd=1.0), None, use_ray=False)
        cfg = _cfg(srv, model="gpt-4-0613", budget_usd=0.02, max_tokens=64)  # prefix price
        batch = run_batch(cfg, _reqs(30), _parse, str(tmp_path), progress=False, use_ray=False)
        assert batch.stopped_by_budget and "dollar budget" in batch.budget_message
        assert batch.stats["total_cost_usd_all_runs"] <= 0.02


def test_concurrency_limit_holds_locally(tmp_path):
    with OpenAITestServer(_json_score, latency_s=0.03) as srv:
        cfg = _cfg(srv, max_concurrency=3)
        batch = run_batch(cfg, _reqs(30), _parse, str(tmp_path), progress=False, use_ray=False)
        assert len(batch.results) == 30
        assert 2 <= srv.calls["peak_inflight"] <= 3


def test_completion_requests_and_identical_requests_pay_once(tmp_path):
    with OpenAITestServer() as srv:
        reqs = [Request(f"r{i}", prompt="def f():\n", params={"max_tokens": 8}) for i in range(6)]
        batch = run_batch(_cfg(srv), reqs, None, str(tmp_path), progress=False, use_ray=False)
        assert [r.value for r in batch.results] == ["    pass\n"] * 6
        assert srv.calls["completion"] == 1  # same question in flight: asked once
        salted = [Request(f"s{i}", prompt="def f():\n", cache_salt=str(i)) for i in range(3)]
        run_batch(_cfg(srv), salted, None, str(tmp_path), progress=False, use_ray=False)
        assert srv.calls["completion"] == 4


def _worker_batch(cfg: LLMConfig, cache: str, scope: str, prefix: str) -> int:
    """Runs in a Ray worker: joins the driver's limiter (attach=True)."""
    with LLMClient(cfg, cache, scope=scope, attach=True, progress=False) as llm:
        return len(llm.run_batch(_reqs(24, prefix), _parse).results)


def test_concurrency_limit_is_global_across_ray_workers(tmp_path, ray_session):
    ray = ray_session
    # this test module is not importable in Ray workers: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with OpenAITestServer(_json_score, latency_s=0.05) as srv:
        cfg = _cfg(srv, max_concurrency=3)
        with LLMClient(cfg, str(tmp_path), scope="global-test", progress=False) as owner:
            assert owner.limiter.kind == "ray"
            owner.run_batch(_reqs(1, "warm"), _parse)  # creates and configures the actor
            task = ray.remote(num_cpus=0)(_worker_batch)
            refs = [task.remote(cfg, str(tmp_path), "global-test", p) for p in ("a", "b")]
            assert ray.get(refs) == [24, 24]
        # each worker alone would run 3 at once; together they still never pass 3
        assert srv.calls["peak_inflight"] == 3
        assert max(srv.paid.values()) == 1
