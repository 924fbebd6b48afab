"""The synth stage against the local OpenAI-compatible test server (real HTTP, real Ray)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from phi_ray.config import load_config
from phi_ray.llm.testserver import OpenAITestServer
from phi_ray.runs import RunDir
from phi_ray.synth import prompts
from phi_ray.synth.stage import run as synth_run
from phi_ray.synth.topics import TopicTree

REPO = Path(__file__).resolve().parents[2]
PRICE = {"input": 2.0, "output": 5.0}  # USD per 1M tokens for "test-model"


def _words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randrange(10**9)}" for _ in range(n))


def _function(name: str, rng: random.Random, wrong: bool = False) -> str:
    k = rng.randrange(2, 90)
    doc = _words(rng, 12)
    return (
        f"def {name}(x: int) -> int:\n"
        f'    """Return x plus {k}: {doc}.\n\n'
        f"    >>> {name}(1)\n    {1 + k + (1 if wrong else 0)}\n"
        f'    """\n    y = x + {k}\n    return y\n'
    )


TEMPLATE_TEXT = " ".join(f"template{i}" for i in range(120))


class Responder:
    """Scripted answers: every 5th invalid, some near-duplicates, the rest unique and valid.

    Per kind, call k: k % 5 == 0 -> code that does not parse; textbooks k % 5 == 1 ->
    a near-copy of one template; exercises k % 5 == 1 -> a failing doctest, k % 5 == 2 ->
    a near-copy of one template; else a unique valid answer.
    """

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.lock = threading.Lock()

    def __call__(self, kind: str, body: dict) -> str:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        book = system == prompts.TEXTBOOK_SYSTEM
        with self.lock:
            k = self.calls["textbooks" if book else "exercises"]
            self.calls["textbooks" if book else "exercises"] += 1
        rng = random.Random(f"{book}:{k}")
        if book:
            return self._textbook(k, rng)
        name = re.search(r"named `(\w+)`", user).group(1)
        if k % 5 == 0:
            return f"```python\ndef {name}(x:\n    return x\n```"
        if k % 5 == 1:
            return f"```python\n{_function(name, rng, wrong=True)}```"
        if k % 5 == 2:
            return f'```python\ndef {name}(x):\n    """{TEMPLATE_TEXT} {k}.\n    """\n    return x * 2\n```'
        return f"```python\n{_function(name, rng)}```"

    def _textbook(self, k: int, rng: random.Random) -> str:
        if k % 5 == 0:
            return f"# Broken\n\n{_words(rng, 60)}\n\n```python\ndef f(:\n    pass\n```\n"
        if k % 5 == 1:
            return f"Sure! Here is the section.\n\n# Template\n\n{TEMPLATE_TEXT} {k}\n\n```python\nx = 1\n```\n"
        code = _function(f"f{k}", rng)
        return f"Certainly!\n\n# Section {k}\n\n{_words(rng, 80)}\n\n```python\n{code}```\n"


def _cfg(tmp_path, srv, *extra):
    return load_config(
        "tiny",
        [
            f"run.root={tmp_path / 'runs'}",
            "run.name=llm",
            f"llm.base_url={srv.base_url}",
            "llm.max_concurrency=4",
            f"llm.prices={{test-model: {json.dumps(PRICE)}}}",
            "synth.model=test-model",
            "synth.n_textbooks=20",
            "synth.n_exercises=20",
            "synth.min_chars=100",
            *extra,
        ],
    )


def _server_cost(calls: Counter) -> float:
    return (
        calls["prompt_tokens"] * PRICE["input"] + calls["completion_tokens"] * PRICE["output"]
    ) / 1e6


def test_generation_constraints_validation_dedup_and_costs(tmp_path, ray_session):
    resp = Responder()
    with OpenAITestServer(resp) as srv:
        # Chunks of 8: near-copies land in different chunks, dedup must work across them.
        cfg = _cfg(tmp_path, srv, "synth.chunk_size=8")
        run = RunDir.from_config(cfg)
        res = synth_run(cfg, run)
        calls = Counter(srv.calls)
        bodies = list(srv.bodies)
        # A second call is up to date: skipped, no request sent.
        assert synth_run(cfg, run).skipped and srv.calls["ok"] == calls["ok"]
        # Forced: finished chunks come from their shards, without a request.
        shards = sorted(Path(run.work_path("synth")).glob("textbooks-*/chunk-*.parquet"))
        assert len(shards) == 3
        stamps = [p.stat().st_mtime_ns for p in shards]
        os.remove(Path(res.path) / "_SUCCESS.json")
        again = synth_run(cfg, run)
        assert not again.skipped and again.counts == res.counts
        assert srv.calls["ok"] == calls["ok"] and again.success["cost_usd_this_run"] == 0
        assert [p.stat().st_mtime_ns for p in shards] == stamps

    # Every sampled constraint reached a request, verbatim.
    tree = TopicTree.load(cfg.synth.topic_tree)
    sent = [json.dumps(b["messages"], sort_keys=True) for b in bodies]
    for kind, make in (
        ("textbooks", prompts.textbook_messages),
        ("exercises", prompts.exercise_messages),
    ):
        for i in range(20):
            s = tree.sample(cfg.run.seed, kind, i)
            assert json.dumps(make(s), sort_keys=True) in sent
            user = make(s)[1]["content"]
            assert s.topic in user and s.audience in user
    assert calls["ok"] == 40  # one paid answer per sample, no retries or repeats

    c = res.counts
    # Textbooks: 4 unparsable, 4 near-copies of a template (1 kept), 12 unique.
    assert c["textbooks_generated"] == 20
    assert c["textbooks_drop_syntax_error"] == 4 and c["textbooks_drop_near_duplicate"] == 3
    assert c["textbooks_kept"] == 13
    # Exercises: 4 unparsable, 4 failing doctests, 4 near-copies (1 kept), 8 unique.
    assert c["exercises_drop_syntax_error"] == 4 and c["exercises_drop_examples_failed"] == 4
    assert c["exercises_drop_near_duplicate"] == 3 and c["exercises_kept"] == 9

    # Costs: what the server counted, at the configured prices.
    assert res.success["cost_usd"] == pytest.approx(_server_cost(calls), rel=1e-9, abs=1e-9)
    assert res.success["cost_usd_this_run"] == pytest.approx(_server_cost(calls), abs=1e-9)
    assert res.success["tokens"] == calls["prompt_tokens"] + calls["completion_tokens"]

    books = pd.read_parquet(Path(res.path) / "textbooks")
    ex = pd.read_parquet(Path(res.path) / "exercises")
    assert len(books) == 13 and len(ex) == 9
    assert not books["content"].str.match(r"(?i)sure|certainly").any()  # boilerplate stripped
    assert (books["kind"] == "textbook").all() and (ex["source"] == "llm").all()
    assert set(books["tests_status"]) <= {"passed", "no_examples"}
    for _, r in books.iterrows():  # provenance matches the sample that produced it
        s = tree.sample(cfg.run.seed, "textbooks", r["sample_index"])
        assert (r["topic"], r["audience"], r["style"]) == (s.topic, s.audience, s.style)
        assert r["prompt_hash"] == prompts.prompt_hash(prompts.textbook_messages(s), "test-model")
    for _, r in ex.iterrows():
        s = tree.sample(cfg.run.seed, "exercises", r["sample_index"])
        assert r["func_name"] == s.func_name and f"def {s.func_name}(" in r["prompt"]
        assert r["completion"].startswith("    ") and '"""' not in r["completion"]
    paid = books["cost_usd"].sum() + ex["cost_usd"].sum()
    assert 0 < paid < res.success["cost_usd"]  # dropped answers were paid for too
    div = json.loads((Path(res.path) / "diversity.json").read_text())
    assert div["textbooks"]["near_dup_rate"] < 0.01 and div["exercises"]["near_dup_rate"] < 0.01
    assert 0 < div["textbooks"]["topic_coverage"] <= 1


def _cache_entries(run: RunDir) -> int:
    path = Path(run.work_path("synth")) / "llm_cache.sqlite"
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


def test_killed_run_resumes_from_the_cache(tmp_path, ray_session):
    n = 24
    with OpenAITestServer(Responder(), latency_s=0.15) as srv:
        cfg = _cfg(tmp_path, srv, f"synth.n_textbooks={n}", "llm.max_concurrency=2")
        run = RunDir.from_config(cfg)
        args = [
            "--preset", "tiny", "--set", f"run.root={cfg.run.root}", "--set", "run.name=llm",
            "--set", f"llm.base_url={srv.base_url}", "--set", "llm.max_concurrency=2",
            "--set", f"llm.prices={{test-model: {json.dumps(PRICE)}}}",
            "--set", "synth.model=test-model", "--set", f"synth.n_textbooks={n}",
            "--set", "synth.min_chars=100",
            "--set", f"run.ray_address={ray_session.get_runtime_context().gcs_address}",
        ]  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "phi_ray.cli", "synth", "textbooks", *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.time() + 60
        while srv.calls["ok"] < 6 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)  # let the server finish (and count) what was in flight at the kill
        assert not run.is_complete("synth")  # a killed stage leaves no output behind
        cached = _cache_entries(run)
        # Answers in flight at the kill were paid for but never cached (at most 2 in flight).
        assert 4 <= cached <= srv.calls["ok"] < n
        before = Counter(srv.calls)

        res = synth_run(load_config("tiny", [*args[1::2][1:], "synth.kinds=[textbooks]"]), run)
        new_calls = srv.calls["ok"] - before["ok"]
    assert new_calls == n - cached  # only the answers the killed run had not paid for
    assert res.counts["textbooks_generated"] == n
    spent_now = (
        (srv.calls["prompt_tokens"] - before["prompt_tokens"]) * PRICE["input"]
        + (srv.calls["completion_tokens"] - before["completion_tokens"]) * PRICE["output"]
    ) / 1e6
    assert res.success["cost_usd_this_run"] == pytest.approx(spent_now, abs=1e-9)
    assert res.success["cost_usd"] > res.success["cost_usd_this_run"]  # earlier answers count
    assert res.success["skipped_kinds"]["exercises"].startswith("not requested")


def test_llm_source_without_an_endpoint_is_a_clear_error(tmp_path):
    cfg = load_config("tiny", [f"run.root={tmp_path}", "synth.source=llm"])
    with pytest.raises(ValueError, match=r"llm\.base_url"):
        synth_run(cfg, RunDir.from_config(cfg))
