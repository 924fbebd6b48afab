"""The response cache: every paid answer, in SQLite, committed before it is parsed.

One row per request key (see :meth:`Request.cache_key`) holds the answer texts and what
the answer cost. A process killed with SIGKILL loses nothing that was committed: SQLite's
WAL journal makes each commit durable against process death, so a rerun answers every
call it had paid for from here. Several processes on one host may share a cache file
(WAL allows concurrent readers and serialised writers; ``busy_timeout`` waits for locks).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    texts TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created_at REAL NOT NULL
)
"""


@dataclass(frozen=True)
class CachedAnswer:
    texts: list[str]
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class ResponseCache:
    """SQLite response cache at ``<directory>/llm_cache.sqlite`` (``path`` may name a file)."""

    def __init__(self, path: str) -> None:
        if not path.endswith((".sqlite", ".db")):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "llm_cache.sqlite")
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # check_same_thread=False: the client's event loop may run in a helper thread;
        # the lock serialises use.
        self._db = sqlite3.connect(path, timeout=60.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against process death in WAL mode (only power loss can lose
        # the last commits), at a fraction of FULL's fsync cost.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def get(self, key: str) -> CachedAnswer | None:
        with self._lock:
            row = self._db.execute(
                "SELECT texts, model, prompt_tokens, completion_tokens, cost_usd "
                "FROM responses WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return CachedAnswer(json.loads(row[0]), row[1], row[2], row[3], row[4])

    def put(self, key: str, answer: CachedAnswer) -> None:
        """Store and commit one paid answer (before anyone parses it)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    answer.model,
                    json.dumps(answer.texts),
                    answer.prompt_tokens,
                    answer.completion_tokens,
                    answer.cost_usd,
                    time.time(),
                ),
            )
            self._db.commit()

    def totals(self) -> tuple[int, float, int]:
        """(tokens, USD, answers) paid for so far, across every session of this cache."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0), "
                "COALESCE(SUM(cost_usd), 0.0), COUNT(*) FROM responses"
            ).fetchone()
        return int(row[0]), float(row[1]), int(row[2])

    def __len__(self) -> int:
        return self.totals()[2]

    def close(self) -> None:
        with self._lock:
            self._db.close()
