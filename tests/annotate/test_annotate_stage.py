"""The annotate stage end to end: heuristic offline, LLM judge under faults, budgets, SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from annotate_corpus import write_corpus

from phi_ray.annotate import stage
from phi_ray.config import load_config
from phi_ray.llm import BudgetExceeded
from phi_ray.llm.testserver import OpenAITestServer
from phi_ray.runs import RunDir

LABEL_COLUMNS = ["id", "score", "label", "judge", "rubric_version", "rationale"]


def _cfg(tmp_path, *sets: str):
    return load_config("tiny", [f"run.root={tmp_path / 'runs'}", "run.name=t", *sets])


def _llm_sets(srv, n: int, *extra: str) -> list[str]:
    return [
        f"llm.base_url={srv.base_url}",
        "llm.backoff_base_s=0.001",
        "llm.backoff_max_s=0.01",
        f"annotate.sample_size={n}",
        *extra,
    ]


def _judge(kind, body):
    """A scripted judge: the score is a function of the file, so answers are checkable."""
    code = body["messages"][1]["content"]
    score = int(hashlib.sha256(code.encode()).hexdigest(), 16) % 6
    return json.dumps({"score": score, "rationale": f"scripted {score}"})


def _labels(run) -> dict[str, dict]:
    table = pq.read_table(run.path("annotate", "labels"))
    assert table.column_names == LABEL_COLUMNS
    return {r["id"]: r for r in table.to_pylist()}


def _failures(run) -> list[dict]:
    with open(run.path("annotate", "failures.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_heuristic_judge_is_the_offline_default(tmp_path, ray_session, caplog, monkeypatch):
    cfg = _cfg(tmp_path, "annotate.sample_size=40", "annotate.heuristic_batch_size=8")
    run = RunDir.from_config(cfg)
    ids = write_corpus(run, 60)
    monkeypatch.setattr(stage, "LOCAL_MAX_ROWS", 10)  # 40 rows: take the Ray Data path
    with caplog.at_level("WARNING", logger="phi_ray.annotate"):
        res = stage.run(cfg, run)
    assert "HEURISTIC judge" in caplog.text
    labels = _labels(run)
    corpus = pq.read_table(run.path("ingest", "corpus"))
    local = stage._heuristic_batch(corpus.filter(pc.is_in(corpus["id"], pa.array(list(labels)))))
    assert {r["id"]: r["score"] for r in local.to_pylist()} == {
        k: r["score"] for k, r in labels.items()
    }  # distributed == in-process
    assert len(labels) == 40 and set(labels) <= set(ids)
    # The sample is written with its content: classify reads it, not the corpus.
    sample = pq.read_table(run.path("annotate", "sample")).sort_by("id")
    assert sample.column("id").to_pylist() == sorted(labels)
    expect = corpus.filter(pc.is_in(corpus["id"], sample["id"])).sort_by("id")
    assert sample.column("content").to_pylist() == expect.column("content").to_pylist()
    assert {r["judge"] for r in labels.values()} == {"heuristic"}
    assert {r["rubric_version"] for r in labels.values()} == {"heuristic-v1"}
    assert all(r["label"] == (r["score"] >= 3) for r in labels.values())
    assert _failures(run) == []
    assert res.success["judge"] == "heuristic" and res.counts["labelled"] == 40
    assert sum(res.counts[f"score_{s}"] for s in range(6)) == 40
    assert stage.run(cfg, run).skipped


def test_thousand_annotations_with_20pct_faults_lose_nothing_and_pay_once(tmp_path, ray_session):
    with OpenAITestServer(_judge) as srv:
        cfg = _cfg(
            tmp_path, *_llm_sets(srv, 1000, "llm.max_concurrency=32", "llm.repair_attempts=3")
        )
        run = RunDir.from_config(cfg)
        ids = write_corpus(run, 1000)
        srv.fault_rate(0.2, seed=7, retry_after=0.01, delay_s=0.05)
        res = stage.run(cfg, run)
        faults = sum(v for k, v in srv.calls.items() if k.startswith("fault:"))
        assert faults >= 200  # ~20% of ~1,250 calls
        labels = _labels(run)
        assert set(labels) == set(ids) and _failures(run) == []  # none lost
        assert max(srv.paid.values()) == 1  # no call paid twice, counted at the server
        llm = res.success["llm"]
        assert llm["api_calls"] == srv.calls["ok"]
        assert llm["cost_usd"] == pytest.approx(
            (srv.calls["prompt_tokens"] * 30 + srv.calls["completion_tokens"] * 60) / 1e6, rel=1e-4
        )
        assert srv.calls["peak_inflight"] <= 32
        for row in list(labels.values())[:50]:
            assert row["rationale"] == f"scripted {row['score']}" and row["judge"] == "llm:gpt-4"


def test_budget_halts_the_stage_and_a_rerun_with_more_completes_it(tmp_path, ray_session):
    with OpenAITestServer(_judge) as srv:
        sets = _llm_sets(srv, 40, "llm.max_concurrency=4", "annotate.max_prompt_chars=2000")
        cfg = _cfg(tmp_path, *sets, "llm.budget_tokens=12000")
        run = RunDir.from_config(cfg)
        write_corpus(run, 40)
        with pytest.raises(BudgetExceeded, match=r"token budget.*rerun with a larger") as e:
            stage.run(cfg, run)
        assert 0 < e.value.counts["done"] < 40 and e.value.counts["pending"] > 0
        assert not run.is_complete("annotate")
        paid_before = srv.calls["ok"]
        assert paid_before <= e.value.counts["done"] + 4  # only what was in flight at the stop
        res = stage.run(_cfg(tmp_path, *sets, "llm.budget_tokens=1000000"), run)
        assert len(_labels(run)) == 40
        assert max(srv.paid.values()) == 1
        assert res.success["llm"]["cache_hits"] == paid_before


def _cached(db: str) -> int:
    """Answers in the child's cache so far (0 while the file or table is being created)."""
    try:
        with closing(sqlite3.connect(db, timeout=5)) as c:
            return c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


_CHILD = """
import sys
import phi_ray.annotate.stage as stage
from phi_ray.config import load_config
from phi_ray.runs import RunDir

# The child skips Ray: a second Ray cluster costs ~30 s on a 2-core test box, and the
# LLM path runs in the driver anyway (the limiter falls back to in-process).
stage.init_ray = lambda cfg: None
cfg = load_config("tiny", sys.argv[1:])
stage.run(cfg, RunDir.from_config(cfg))
"""


def test_sigkill_midway_then_rerun_answers_every_paid_call_from_cache(tmp_path, ray_session):
    answered, gate, reject = [0], threading.Event(), threading.Event()
    lock = threading.Lock()

    def responder(kind, body):
        with lock:
            answered[0] += 1
            blocked = answered[0] > 30 and not reject.is_set()
        if blocked:  # hold later calls unanswered (unpaid) until the child is dead
            gate.wait(60)
            raise RuntimeError("client went away")
        return _judge(kind, body)

    with OpenAITestServer(responder) as srv:
        sets = [f"run.root={tmp_path / 'runs'}", "run.name=t",
                *_llm_sets(srv, 80, "llm.max_concurrency=4")]  # fmt: skip
        cfg = load_config("tiny", sets)
        run = RunDir.from_config(cfg)
        write_corpus(run, 80)
        log = open(tmp_path / "child.log", "w")
        child = subprocess.Popen([sys.executable, "-c", _CHILD, *sets], stdout=log, stderr=log)
        db = os.path.join(run.work_path("annotate"), "llm_cache.sqlite")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            cached = _cached(db)
            if cached == 30 and srv.calls["requests"] > 30:
                break
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            time.sleep(0.05)
        else:
            pytest.fail("child never reached 30 cached answers")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
        reject.set()
        gate.set()
        assert srv.calls["ok"] == 30 and not run.is_complete("annotate")
        res = stage.run(cfg, run)
        assert len(_labels(run)) == 80
        assert max(srv.paid.values()) == 1 and srv.calls["ok"] == 80
        assert res.success["llm"]["cache_hits"] == 30  # every call paid before the kill
        assert res.success["llm"]["api_calls"] == 50
