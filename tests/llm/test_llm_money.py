"""Money under faults: no paid answer lost or bought twice, budgets that hold.

Each test attacks the client the way an operator's bad day would (SIGKILL, two workers on
one cache, a server that ignores max_tokens or bills unreadable answers, a wrong key
mid-batch, an endpoint switch), against the real local test server, and checks the
server's own billing counters, not the client's word.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phi_ray.config import ConfigError, LLMConfig, load_config
from phi_ray.llm import LLMClient, LLMError, ParseError, Request, run_batch
from phi_ray.llm.cache import _HOST, ResponseCache, Sent
from phi_ray.llm.testserver import OpenAITestServer

WORKER = str(Path(__file__).with_name("llm_worker.py"))


def _cfg(srv, **kw) -> LLMConfig:
    base = dict(base_url=srv.base_url, model="gpt-4", backoff_base_s=0.001, backoff_max_s=0.01)
    return LLMConfig(**{**base, **kw})


def _reqs(n: int, prefix: str = "q") -> list[Request]:
    return [
        Request(f"{prefix}{i}", messages=[{"role": "user", "content": f"{prefix}{i}"}])
        for i in range(n)
    ]


def _score(kind, body):
    last = body["messages"][-1]["content"] if kind == "chat" else body["prompt"]
    return json.dumps({"score": 4 if "could not be used" in last else len(last) % 6})


def _parse(text: str) -> int:
    try:
        return int(json.loads(text)["score"])
    except (ValueError, KeyError, TypeError) as e:
        raise ParseError(f"not JSON with a score: {e}") from None


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as con:
            return con.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the file exists, its tables not yet
        return 0


def _answered(db: Path) -> int:
    return _count(db, "SELECT COUNT(*) FROM responses WHERE status != 'raw'")


def _run(client_kw=None, **kw):
    return run_batch(progress=False, use_ray=False, **(client_kw or {}), **kw)


def _worker(srv, cache: Path, n: int, conc: int, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, WORKER, srv.base_url, str(cache), str(n), str(conc), str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_run_then_rerun_pays_twice_at_most_what_was_in_flight(tmp_path):
    n, conc = 48, 8
    db = tmp_path / "llm_cache.sqlite"
    with OpenAITestServer(latency_s=0.25) as srv:
        child = _worker(srv, tmp_path, n, conc, tmp_path / "out.json")
        deadline = time.monotonic() + 60
        while _answered(db) < 12:
            assert child.poll() is None, child.stdout.read()
            assert time.monotonic() < deadline, "the child never got 12 answers"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
        wal = _count(db, "SELECT COUNT(*) FROM inflight")  # its write-ahead records
        while srv.inflight:  # the server finishes (and bills) what the child had sent
            time.sleep(0.02)
        cached = _answered(db)
        billed = sum(srv.paid_by_prompt.values())
        in_flight = billed - cached  # paid, but the answer never reached the cache
        assert 0 < in_flight <= wal <= conc
        t0 = time.monotonic()
        batch = _run(cfg=_cfg(srv, max_concurrency=conc, max_tokens=16, timeout_s=60),
                     requests=_reqs(n), cache_dir=str(tmp_path))  # fmt: skip
        # the dead child's leases (valid for 2 more minutes) are taken over at once
        assert time.monotonic() - t0 < 30
    assert len(batch.results) == n and not batch.failures
    assert batch.stats["inflight_at_start"] == wal
    assert batch.stats["api_calls"] == n - cached
    paid_twice = sum(v - 1 for v in srv.paid_by_prompt.values())
    assert paid_twice <= in_flight
    assert _count(db, "SELECT COUNT(*) FROM inflight") == 0


def test_two_processes_on_one_cache_never_pay_twice_for_a_prompt(tmp_path):
    n, conc = 24, 4
    gate_open = []

    def responder(kind, body):
        while not gate_open:  # hold every answer until both processes are asking
            time.sleep(0.01)
        time.sleep(0.05)
        return "OK"

    with OpenAITestServer(responder) as srv:
        kids = [_worker(srv, tmp_path, n, conc, tmp_path / f"out{i}.json") for i in (0, 1)]
        for k in kids:
            assert k.stdout.readline().strip() == "ready"
        gate_open.append(True)
        for k in kids:
            assert k.wait(60) == 0, k.stdout.read()
    outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in (0, 1)]
    assert [o["results"] for o in outs] == [n, n]
    assert max(srv.paid_by_prompt.values()) == 1 and sum(srv.paid_by_prompt.values()) == n
    assert sum(o["stats"].get("api_calls", 0) for o in outs) == n
    # they really overlapped: one waited for the other's lease at least once
    assert sum(o["stats"].get("waited_for_other_process", 0) for o in outs) > 0


def test_leases_of_dead_local_owners_and_expired_remote_owners_are_taken_over(tmp_path):
    cache = ResponseCache(str(tmp_path))
    sent = Sent("r", "chat", "m", "e", 10, 10)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    now = time.time()
    rows = [
        ("live-remote", f"elsewhere:{os.getpid()}:-:x", now + 100),
        ("expired-remote", "elsewhere:1:-:x", now - 1),
        ("dead-local", f"{_HOST}:{dead.stdout.strip()}:-:x", now + 100),
        ("reused-pid", f"{_HOST}:{os.getpid()}:not-my-start-time:x", now + 100),
    ]
    with sqlite3.connect(cache.path) as db:
        for key, owner, expires in rows:
            db.execute(
                "INSERT INTO inflight (key, owner, expires, started, request_id) "
                "VALUES (?, ?, ?, ?, 'r')",
                (key, owner, expires, now),
            )
    assert cache.claim("live-remote", sent, 60) == ("busy", rows[0][1])
    for key, owner, _ in rows[1:]:
        assert cache.claim(key, sent, 60) == ("mine", owner)
    assert cache.orphans() == []  # all taken over by us now
    cache.close()


def test_token_budget_holds_with_cjk_prompts_counted_by_a_real_tokenizer(tmp_path, tokenizer):
    budget = 3000

    def count(text: str) -> int:
        return len(tokenizer.encode(text))

    def responder(kind, body):
        return "好的，这个函数返回列表。" * 4

    prompts = [
        Request(f"c{i}", messages=[{"role": "user", "content": f"请为第{i}个数据处理函数评分" * 3}])
        for i in range(40)
    ]
    with OpenAITestServer(responder, honor_max_tokens=True, count_tokens=count) as srv:
        cfg = _cfg(srv, budget_tokens=budget, max_tokens=32, max_concurrency=8)
        batch = _run(cfg=cfg, requests=prompts, cache_dir=str(tmp_path))
        billed = srv.calls["prompt_tokens"] + srv.calls["completion_tokens"]
        assert batch.stopped_by_budget and 0 < len(batch.results) < 40
        assert billed <= budget
        assert batch.stats["total_tokens_all_runs"] == billed  # usage counted as billed
        # what the old len//3 estimate would have reserved is far below what was billed
        assert sum(len(p.messages[0]["content"]) // 3 for p in prompts[:1]) < count(
            prompts[0].messages[0]["content"]
        )


@pytest.mark.parametrize("cap", ["budget_tokens", "budget_usd"])
def test_budget_holds_against_a_server_that_ignores_max_tokens(tmp_path, cap):
    limit = {"budget_tokens": 1500, "budget_usd": 0.09}[cap]

    def responder(kind, body):
        return "x" * 400  # 100 tokens, whatever max_tokens says

    with OpenAITestServer(responder, honor_max_tokens=False) as srv:
        cfg = _cfg(srv, **{cap: limit}, max_tokens=16, max_concurrency=8)

        def spent() -> float:
            pt, ct = srv.calls["prompt_tokens"], srv.calls["completion_tokens"]
            return pt + ct if cap == "budget_tokens" else (pt * 30 + ct * 60) / 1e6

        batch = _run(cfg=cfg, requests=_reqs(60), cache_dir=str(tmp_path))
        assert batch.stopped_by_budget and len(batch.results) > 3
        assert spent() <= limit
        # a rerun with the same budget knows the endpoint from the cache: still within it
        again = _run(cfg=cfg, requests=_reqs(60), cache_dir=str(tmp_path))
        assert again.stopped_by_budget and spent() <= limit
        assert max(srv.paid.values()) == 1


def test_a_dollar_budget_refuses_unpriced_models_at_load_and_per_request(tmp_path):
    with pytest.raises(ConfigError, match="mystery"):
        load_config("tiny", ["llm.base_url=http://127.0.0.1:9/v1", "llm.budget_usd=5",
                             "llm.model=mystery"])  # fmt: skip
    with OpenAITestServer(_score) as srv:
        reqs = [
            *_reqs(3),
            Request("m", messages=[{"role": "user", "content": "m"}], model="mystery"),
        ]
        with pytest.raises(LLMError, match="no entry for model 'mystery'"):
            _run(cfg=_cfg(srv, budget_usd=1.0), requests=reqs, cache_dir=str(tmp_path))
        assert all(b["model"] != "mystery" for b in srv.bodies)


def test_malformed_and_unusable_200s_are_paid_once_and_never_replayed_as_answers(tmp_path):
    with OpenAITestServer(_score) as srv:
        for kind, prompt in [("badjson", "q1"), ("nochoices", "q2"), ("nousage", "q3"),
                             ("partial_usage", "q4"), ("malformed", "q5")]:  # fmt: skip
            srv.fault_on(prompt, kind)
        srv.fault_on("def broken", "badjson")
        cfg = _cfg(srv, repair_attempts=1)
        chat = _run(cfg=cfg, requests=_reqs(6), parser=_parse, cache_dir=str(tmp_path))
        comp = [Request("c", prompt="def broken():\n")]
        done = _run(cfg=cfg, requests=comp, parser=_parse, cache_dir=str(tmp_path))
        calls = srv.calls["requests"]
        assert calls == 6 + 3 + 1  # three re-asked through the repair path; nothing retried
        assert all(v == 1 for v in srv.paid.values())
        by_id = {r.id: r for r in chat.results}
        assert sorted(by_id) == [f"q{i}" for i in range(6)]
        assert {i: by_id[i].repairs for i in by_id} == {
            "q0": 0, "q1": 1, "q2": 1, "q3": 0, "q4": 0, "q5": 1}  # fmt: skip
        assert chat.stats["malformed_200"] == 2
        # usage missing: estimated from above, never below what was billed
        assert chat.stats["completion_tokens"] >= srv.calls["completion_tokens"] - 1
        [fail] = done.failures
        assert fail.reason == "parse" and "malformed 200" in fail.error
        # a rerun replays the malformed answers as malformed (repair answers are cached)
        again = _run(cfg=cfg, requests=_reqs(6), parser=_parse, cache_dir=str(tmp_path))
        again_c = _run(cfg=cfg, requests=comp, parser=_parse, cache_dir=str(tmp_path))
        assert srv.calls["requests"] == calls
        assert {r.id: (r.value, r.repairs) for r in again.results} == {
            i: (r.value, r.repairs) for i, r in by_id.items()
        }
        assert [f.reason for f in again_c.failures] == ["parse"] and not again_c.results
    statuses = _count(tmp_path / "llm_cache.sqlite",
                      "SELECT COUNT(*) FROM responses WHERE status = 'malformed'")  # fmt: skip
    assert statuses == 3


def test_answers_are_committed_before_the_parser_sees_them(tmp_path):
    db = tmp_path / "llm_cache.sqlite"

    def parse(text: str) -> str:
        assert _count(db, f"SELECT COUNT(*) FROM responses WHERE texts = '{json.dumps([text])}'")
        raise ParseError("rejected after it was stored")

    with OpenAITestServer(_score) as srv:
        batch = _run(cfg=_cfg(srv, repair_attempts=0), requests=_reqs(4), parser=parse,
                     cache_dir=str(tmp_path))  # fmt: skip
    assert [f.error for f in batch.failures] == ["ParseError: rejected after it was stored"] * 4


def test_an_answer_left_unparsed_by_a_crash_is_settled_without_paying_again(tmp_path):
    cfg = LLMConfig(base_url="http://127.0.0.1:9/v1", max_attempts=1)  # nothing listens there
    req = _reqs(1)[0]
    body = {"choices": [{"message": {"content": '{"score": 5}'}}], "usage": {"prompt_tokens": 3}}
    with LLMClient(cfg, str(tmp_path), progress=False, use_ray=False) as llm:
        sent = Sent(req.id, "chat", "gpt-4", llm._t.endpoint, req.prompt_bound(), 512)
        llm.cache.put_raw(llm.cache_key(req), json.dumps(body).encode(), sent)  # then "killed"
    with LLMClient(cfg, str(tmp_path), progress=False, use_ray=False) as llm:
        batch = llm.run_batch([req], _parse)
    assert [r.value for r in batch.results] == [5] and batch.stats["recovered_raw"] == 1
    assert batch.stats.get("api_calls", 0) == 0


def test_a_fatal_error_stops_new_calls_and_keeps_the_answers_in_flight(tmp_path):
    with OpenAITestServer(_score, latency_s=0.3) as srv:
        srv.fault_on("q2", "401")  # answered at once, while q0, q1 and q3 are in flight
        cfg = _cfg(srv, max_concurrency=4)
        with pytest.raises(LLMError, match="answered 401"):
            _run(cfg=cfg, requests=_reqs(20), parser=_parse, cache_dir=str(tmp_path))
        assert srv.calls["requests"] == 4  # nothing new started after the 401
        # the three answers in flight at the 401 were paid: they are in the cache
        assert _answered(tmp_path / "llm_cache.sqlite") == srv.calls["ok"] == 3
        done = _run(cfg=cfg, requests=_reqs(20), parser=_parse, cache_dir=str(tmp_path))
        assert len(done.results) == 20 and srv.calls["ok"] == 20
        assert max(srv.paid.values()) == 1


def test_answers_from_one_endpoint_are_not_served_for_another(tmp_path):
    with (
        OpenAITestServer(lambda k, b: '{"score": 1}') as a,
        OpenAITestServer(lambda k, b: '{"score": 2}') as b,
    ):
        ask = dict(requests=_reqs(5), parser=_parse, cache_dir=str(tmp_path))
        assert {r.value for r in _run(cfg=_cfg(a), **ask).results} == {1}
        assert {r.value for r in _run(cfg=_cfg(b), **ask).results} == {2}
        assert {r.value for r in _run(cfg=_cfg(a), **ask).results} == {1}
        assert a.calls["ok"] == 5 and b.calls["ok"] == 5
        # one server moved to a new URL keeps its answers when it is named
        same = _run(cfg=_cfg(b, endpoint_id=a.base_url), **ask)
        assert {r.value for r in same.results} == {1} and b.calls["ok"] == 5


def test_an_object_store_run_keeps_its_cache_under_work_and_a_new_host_restores_it(
    tmp_path, monkeypatch
):
    import tempfile

    from s3_server import S3Server

    from phi_ray.runs import RunDir

    with S3Server(tmp_path / "moto.log") as s3:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
        s3.create_bucket("phi")
        run = RunDir("s3://phi/runs", "llm")
        uri = run.work_path("annotate")
        remote = f"{uri.split('://', 1)[1]}/llm_cache.sqlite"
        for host in ("host1", "host2"):
            (tmp_path / host).mkdir()
        with OpenAITestServer(_score) as srv:
            cfg = _cfg(srv, cache_sync_s=0.2)
            monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "host1"))
            with LLMClient(cfg, uri, progress=False, use_ray=False) as llm:
                assert llm.cache.path.startswith(str(tmp_path / "host1"))
                first = llm.run_batch(_reqs(8), _parse)
                deadline = time.monotonic() + 30
                while llm.sync.pushes == 0:  # the periodic sync, before any close
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                more = llm.run_batch(_reqs(4, "late"), _parse)  # only the final sync has these
            assert run.fs.get_file_info(remote).size > 0
            # the head node is replaced: a new host with an empty temp dir
            monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "host2"))
            with LLMClient(cfg, uri, progress=False, use_ray=False) as llm:
                again = llm.run_batch([*_reqs(8), *_reqs(4, "late")], _parse)
        assert len(first.results) == 8 and len(more.results) == 4
        assert len(again.results) == 12 and all(r.cached for r in again.results)
        assert srv.calls["ok"] == 12


def test_a_request_cannot_lift_the_output_cap_its_budget_reserved(tmp_path):
    with OpenAITestServer(_score) as srv:
        reqs = [
            Request(
                "none", messages=[{"role": "user", "content": "a"}], params={"max_tokens": None}
            ),
            Request(
                "big", messages=[{"role": "user", "content": "b"}], params={"max_tokens": 10**9}
            ),
        ]
        batch = _run(cfg=_cfg(srv, budget_tokens=5000, max_tokens=64), requests=reqs,
                     cache_dir=str(tmp_path))  # fmt: skip
        assert [b["max_tokens"] for b in srv.bodies] == [64]  # None is the configured cap
        assert [r.id for r in batch.results] == ["none"] and batch.pending == ["big"]


def test_clients_sharing_a_cache_share_its_budget(tmp_path):
    import threading

    budget = 300  # each client alone would spend ~200 of it: together they would pass it
    with OpenAITestServer(_score, latency_s=0.05, honor_max_tokens=True) as srv:
        cfg = _cfg(srv, budget_tokens=budget, max_tokens=16, max_concurrency=4)
        out: dict[str, object] = {}

        def work(prefix: str) -> None:  # its own client, limiter and ledger: another worker
            out[prefix] = _run(cfg=cfg, requests=_reqs(60, prefix), cache_dir=str(tmp_path))

        threads = [threading.Thread(target=work, args=(p,)) for p in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        billed = srv.calls["prompt_tokens"] + srv.calls["completion_tokens"]
        summary = {
            p: (len(b.results), len(b.failures), len(b.pending), b.budget_message)
            for p, b in out.items()
        }
        assert all(out[p].stopped_by_budget for p in ("a", "b")), summary
        assert billed <= budget
        assert min(len(out[p].results) for p in ("a", "b")) > 0  # both got to spend
