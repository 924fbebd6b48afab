"""Red-team cases for the LLM client beyond tests/llm/test_llm_money.py: a hostile or
broken server's billing numbers must never crash a batch (and every rerun) or lose a
paid answer."""

from __future__ import annotations

from phi_ray.llm.testserver import OpenAITestServer
from tests.http_kit import json_200_server
from tests.llm.test_llm_money import _cfg, _parse, _reqs, _run, _score


def test_usage_counts_past_64_bits_neither_crash_the_batch_nor_its_reruns(tmp_path):
    # SQLite integers are 64-bit: a usage of 10**20 tokens used to raise OverflowError
    # out of run_batch, after the raw body was committed, so every rerun raised it again.
    def count(text: str) -> int:
        return 10**20 if "q1" in text else len(text) // 4 + 1

    with OpenAITestServer(_score, count_tokens=count) as srv:
        cfg = _cfg(srv, max_concurrency=1)
        first = _run(cfg=cfg, requests=_reqs(3), parser=_parse, cache_dir=str(tmp_path))
        assert sorted(r.id for r in first.results) == ["q0", "q1", "q2"], first.failures
        # What the server says it billed is counted (clamped, never below a sane bound)
        assert first.stats["prompt_tokens"] >= 1 << 40
        again = _run(cfg=cfg, requests=_reqs(3), parser=_parse, cache_dir=str(tmp_path))
        assert sorted(r.id for r in again.results) == ["q0", "q1", "q2"]
        assert srv.calls["ok"] == 3 and max(srv.paid.values()) == 1
        # a capped rerun sees that spend and refuses to pay for anything new
        capped = _run(cfg=_cfg(srv, budget_tokens=10**9), requests=_reqs(5), parser=_parse,
                      cache_dir=str(tmp_path))  # fmt: skip
        assert srv.calls["ok"] == 3 and len(capped.results) == 3


def test_lone_surrogates_in_an_answer_are_not_unicode_and_never_reach_the_stage(tmp_path):
    # JSON may escape a lone surrogate ("\ud800"): the answer's `model` used to make the
    # cache's UTF-8 write raise (after the raw body was committed: every rerun raised it
    # again), and a text holding one crashes the stage's Parquet write later.
    import pyarrow as pa

    from phi_ray.config import LLMConfig

    body = (
        b'{"model": "gpt-4\\ud800", "choices": [{"message": {"content": '
        b'"{\\"score\\": 3} \\udfff tail"}}], "usage": {"prompt_tokens": 3, '
        b'"completion_tokens": 5}}'
    )
    srv, calls = json_200_server(body)
    try:
        cfg = LLMConfig(base_url=f"http://127.0.0.1:{srv.server_port}/v1", model="gpt-4")
        for _ in range(2):  # the second run is answered from the cache
            batch = _run(cfg=cfg, requests=_reqs(2), parser=None, cache_dir=str(tmp_path))
            assert len(batch.results) == 2, batch.failures
            for r in batch.results:
                pa.array([r.text, r.model])  # what a stage writes: must be valid UTF-8
                assert r.text.startswith('{"score": 3} ') and r.text.endswith(" tail")
        assert len(calls) == 2
    finally:
        srv.shutdown()
