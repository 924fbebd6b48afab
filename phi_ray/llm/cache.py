"""The response cache: every paid answer in SQLite, committed the moment it arrives.

Two tables:

- ``responses``: one row per request key (see :meth:`Request.cache_key`). The raw body is
  written (status ``raw``) before anything parses it, then the row is settled into
  ``ok`` (texts and usage) or ``malformed`` (a billed 200 nobody can read: kept, counted,
  sent to the repair path, never replayed as an answer). A row left ``raw`` by a crash is
  settled when the cache is next opened.
- ``inflight``: the write-ahead record of each request about to be sent, with a lease
  (owner, expiry). It is how a rerun knows what was in flight when a process died, and
  how processes sharing one cache file avoid paying twice for one prompt: a second
  process that finds a live lease waits for the answer; a lease whose owner is dead (same
  host: its pid is gone) or expired (another host) is taken over.

SQLite's WAL journal makes each commit durable against process death (``synchronous=
NORMAL`` only risks the last commits on power loss), allows concurrent readers, and
serialises writers; ``BEGIN IMMEDIATE`` makes a claim atomic across processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

FILENAME = "llm_cache.sqlite"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        texts TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_usd REAL NOT NULL,
        created_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS inflight (
        key TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires REAL NOT NULL,
        started REAL NOT NULL,
        request_id TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    )""",
    # What every answer in ``responses`` cost, kept by triggers (every writer, the object
    # store merge included): a budget check reads one row instead of summing the table.
    """CREATE TABLE IF NOT EXISTS spend (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        tokens INTEGER NOT NULL,
        usd REAL NOT NULL
    )""",
    """INSERT OR IGNORE INTO spend SELECT 1,
        COALESCE(SUM(prompt_tokens + completion_tokens), 0), COALESCE(SUM(cost_usd), 0.0)
        FROM responses""",
    """CREATE TRIGGER IF NOT EXISTS spend_ins AFTER INSERT ON responses BEGIN
        UPDATE spend SET tokens = tokens + NEW.prompt_tokens + NEW.completion_tokens,
            usd = usd + NEW.cost_usd WHERE id = 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS spend_upd AFTER UPDATE ON responses BEGIN
        UPDATE spend SET
            tokens = tokens + NEW.prompt_tokens + NEW.completion_tokens
                - OLD.prompt_tokens - OLD.completion_tokens,
            usd = usd + NEW.cost_usd - OLD.cost_usd WHERE id = 1;
    END""",
    """CREATE TRIGGER IF NOT EXISTS spend_del AFTER DELETE ON responses BEGIN
        UPDATE spend SET tokens = tokens - OLD.prompt_tokens - OLD.completion_tokens,
            usd = usd - OLD.cost_usd WHERE id = 1;
    END""",
)
# Columns added after the first schema (ALTERed into older cache files).
_EXTRA = {
    "status": "TEXT NOT NULL DEFAULT 'ok'",  # raw | ok | malformed
    "raw": "BLOB",  # the body as it arrived; dropped once parsed ok
    "error": "TEXT",
    "kind": "TEXT NOT NULL DEFAULT 'chat'",
    "endpoint": "TEXT NOT NULL DEFAULT ''",
    "prompt_bound": "INTEGER NOT NULL DEFAULT 0",
    "max_out": "INTEGER NOT NULL DEFAULT 0",  # max_tokens * n asked for
}
_EXTRA_INFLIGHT = {  # each lease's budget reservation (worst case), for cross-process caps
    "res_tokens": "INTEGER NOT NULL DEFAULT 0",
    "res_usd": "REAL NOT NULL DEFAULT 0.0",
}


@dataclass(frozen=True)
class CachedAnswer:
    """A paid answer. ``status`` "malformed": billed but unreadable (``error`` says why)."""

    texts: list[str]
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    status: str = "ok"
    error: str | None = None
    raw: bytes | None = None


@dataclass(frozen=True)
class Sent:
    """What the write-ahead record keeps about a request (and a raw row needs to settle)."""

    request_id: str
    kind: str
    model: str
    endpoint: str
    prompt_bound: int
    max_out: int


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):  # a zombie: dead, not yet reaped
        return None
    return fields[19] if len(fields) > 19 else ""


_HOST = socket.gethostname()


def owner_id() -> str:
    """``host:pid:start:nonce`` — a lease owner, checkable for liveness on this host."""
    pid = os.getpid()
    return f"{_HOST}:{pid}:{_proc_start(pid) or '-'}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str) -> bool:
    """False when ``owner`` ran on this host and its process is gone (or its pid reused).
    Owners on other hosts are assumed alive: only their lease expiry frees their rows."""
    try:
        host, pid_s, start, _ = owner.rsplit(":", 3)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != _HOST:
        return True
    now_start = _proc_start(pid)
    if now_start is None:
        if not os.path.exists("/proc/self/stat"):  # not Linux: ask the kernel instead
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        return False
    return start in ("-", now_start)


class ResponseCache:
    """SQLite cache at ``<directory>/llm_cache.sqlite`` (``path`` may name the file)."""

    def __init__(self, path: str) -> None:
        if not path.endswith((".sqlite", ".db")):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, FILENAME)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.owner = owner_id()
        self._lock = threading.Lock()
        # check_same_thread=False: the client's loop may run in a helper thread; the lock
        # serialises use. isolation_level=None: transactions are explicit (BEGIN IMMEDIATE).
        self._db = sqlite3.connect(
            path, timeout=60.0, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (WAL -> database, with an fsync) run in a helper thread, not inside a
        # commit on the event loop's thread, where an fsync on a busy disk stalls every call.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        # INSERT OR REPLACE deletes the old row: its DELETE trigger must fire (spend stays true)
        self._db.execute("PRAGMA recursive_triggers=ON")
        with self._tx():
            migrate(self._db)
        self._closing = threading.Event()
        self._ckpt = threading.Thread(
            target=self._checkpoints, name="phi-ray-llm-ckpt", daemon=True
        )
        self._ckpt.start()

    def _checkpoints(self) -> None:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            while not self._closing.wait(1.0):
                # PASSIVE: copies what no reader needs, never blocks writers
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass  # the file went away (test cleanup); the next open checkpoints
        finally:
            db.close()

    def __bool__(self) -> bool:  # never the row count (``__len__`` scans the table)
        return True

    def _tx(self):
        return _Tx(self._lock, self._db)

    # -- answers --------------------------------------------------------------------------
    def get(self, key: str) -> CachedAnswer | None:
        """The settled answer for ``key`` (ok or malformed), or None."""
        with self._lock:
            row = self._db.execute(
                _SELECT + " WHERE key = ? AND status != 'raw'", (key,)
            ).fetchone()
        return _answer(row) if row else None

    def put_raw(
        self, key: str, raw: bytes, sent: Sent, provisional: tuple[int, float] = (0, 0.0)
    ) -> None:
        """Commit a body the moment it arrives, before anyone parses it; the key's
        write-ahead record ends in the same transaction. Until it is parsed, the row
        counts ``provisional`` (the call's reservation) as spent."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses (key, model, texts, prompt_tokens, "
                "completion_tokens, cost_usd, created_at, status, raw, kind, endpoint, "
                "prompt_bound, max_out) VALUES (?, ?, '[]', ?, 0, ?, ?, 'raw', ?, ?, ?, ?, ?)",
                (
                    key,
                    sent.model,
                    provisional[0],
                    provisional[1],
                    time.time(),
                    raw,
                    sent.kind,
                    sent.endpoint,
                    sent.prompt_bound,
                    sent.max_out,
                ),
            )
            db.execute("DELETE FROM inflight WHERE key = ?", (key,))

    def settle(self, key: str, ans: CachedAnswer) -> None:
        """Replace a raw row by what parsing made of it (the raw body stays if malformed)."""
        with self._lock:  # one statement: its own transaction
            self._db.execute(
                "UPDATE responses SET texts = ?, model = ?, prompt_tokens = ?, "
                "completion_tokens = ?, cost_usd = ?, status = ?, error = ?, "
                "raw = CASE WHEN ? = 'ok' THEN NULL ELSE raw END WHERE key = ?",
                (
                    json.dumps(ans.texts),
                    ans.model,
                    ans.prompt_tokens,
                    ans.completion_tokens,
                    ans.cost_usd,
                    ans.status,
                    ans.error,
                    ans.status,
                    key,
                ),
            )

    def settle_raw(self, parse: Callable[[bytes, Sent], CachedAnswer]) -> int:
        """Parse the rows a crash left raw (arrived, committed, not yet parsed)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, raw, kind, model, endpoint, prompt_bound, max_out "
                "FROM responses WHERE status = 'raw'"
            ).fetchall()
        for key, raw, kind, model, endpoint, pb, mo in rows:
            self.settle(key, parse(bytes(raw or b""), Sent("", kind, model, endpoint, pb, mo)))
        return len(rows)

    # -- write-ahead records and leases -----------------------------------------------------
    def claim(
        self,
        key: str,
        sent: Sent,
        lease_s: float,
        reserve: tuple[int, float] = (0, 0.0),
        caps: tuple[int | None, float | None] = (None, None),
    ) -> tuple[str, object]:
        """Take (or renew) the right to pay for ``key``, atomically across processes.

        ("done", answer) when it is answered already; ("raw", (body, sent)) when it is paid
        but not parsed yet (the caller settles it); ("busy", owner) when another live
        owner holds a lease; ("refused", why) when the spend of every process on this
        cache, plus their live reservations, plus ``reserve`` would pass ``caps``; ("mine",
        previous owner or None) otherwise — the write-ahead record (with ``reserve``) is
        then committed, so a crash after this point is visible to a rerun.
        """
        now = time.time()
        with self._tx() as db:
            row = db.execute(_SELECT + " WHERE key = ?", (key,)).fetchone()
            if row is not None and row[5] != "raw":
                return "done", _answer(row)
            if row is not None:  # paid, not parsed yet (its writer died, or is parsing now):
                sent = db.execute(  # the caller parses it too (the same bytes, the same answer)
                    "SELECT kind, model, endpoint, prompt_bound, max_out FROM responses "
                    "WHERE key = ?",
                    (key,),
                ).fetchone()
                return "raw", (bytes(row[7] or b""), Sent("", *sent))
            cur = db.execute(
                "SELECT owner, expires, attempts FROM inflight WHERE key = ?", (key,)
            ).fetchone()
            if cur and cur[0] != self.owner and cur[1] > now and owner_alive(cur[0]):
                return "busy", cur[0]
            if caps != (None, None):
                why = _over_cap(db, key, now, reserve, caps)
                if why:
                    return "refused", why
            db.execute(
                "INSERT OR REPLACE INTO inflight (key, owner, expires, started, request_id, "
                "attempts, res_tokens, res_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    self.owner,
                    now + lease_s,
                    now,
                    sent.request_id,
                    (cur[2] if cur else 0) + 1,
                    reserve[0],
                    reserve[1],
                ),
            )
            return "mine", (cur[0] if cur and cur[0] != self.owner else None)

    def release(self, key: str) -> None:
        """Drop this owner's lease on ``key`` (the call ended without a paid answer)."""
        with self._tx() as db:
            db.execute("DELETE FROM inflight WHERE key = ? AND owner = ?", (key, self.owner))

    def release_all(self) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM inflight WHERE owner = ?", (self.owner,))

    def orphans(self) -> list[tuple[str, str, float, str]]:
        """(key, request id, started, owner) of write-ahead records whose owner is gone:
        requests in flight when an earlier process died (they may have been paid)."""
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT key, request_id, started, owner, expires FROM inflight")
            rows = rows.fetchall()
        return [
            (k, r, s, o)
            for k, r, s, o, e in rows
            if o != self.owner and (e <= now or not owner_alive(o))
        ]

    def drop(self, keys: Iterable[str]) -> None:
        """Delete the write-ahead records of ``keys`` (orphans, once reported)."""
        with self._tx() as db:
            db.executemany("DELETE FROM inflight WHERE key = ?", ((k,) for k in keys))

    # -- accounting ----------------------------------------------------------------------------
    def totals(self) -> tuple[int, float, int]:
        """(tokens, USD, answers) paid for so far, across every session of this cache."""
        with self._lock:
            tokens, usd = self._db.execute("SELECT tokens, usd FROM spend").fetchone()
            (n,) = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()
        return int(tokens), float(usd), int(n)

    def out_ratio(self) -> float | None:
        """The most completion tokens an answer used per token of max_tokens asked for
        (> 1: the endpoint ignores max_tokens), over this cache's history; None if unknown."""
        with self._lock:
            row = self._db.execute(
                "SELECT MAX(CAST(completion_tokens AS REAL) / max_out) FROM responses "
                "WHERE status = 'ok' AND max_out > 0"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def __len__(self) -> int:
        return self.totals()[2]

    def close(self) -> None:
        self._closing.set()
        self._ckpt.join(timeout=30)
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._db.close()


_SELECT = (
    "SELECT texts, model, prompt_tokens, completion_tokens, cost_usd, status, error, raw "
    "FROM responses"
)


def _answer(row: tuple) -> CachedAnswer:
    raw = bytes(row[7]) if row[7] is not None else None
    return CachedAnswer(json.loads(row[0]), row[1], row[2], row[3], row[4], row[5], row[6], raw)


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables and triggers, and add the columns later versions need to an older
    file."""
    for table, extra in (("responses", _EXTRA), ("inflight", _EXTRA_INFLIGHT)):
        db.execute(_SCHEMA[0 if table == "responses" else 1])
        have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        for col, decl in extra.items():
            if col not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
    for stmt in _SCHEMA[2:]:
        db.execute(stmt)


def _over_cap(
    db: sqlite3.Connection,
    key: str,
    now: float,
    reserve: tuple[int, float],
    caps: tuple[int | None, float | None],
) -> str | None:
    """Why ``reserve`` would pass a cap, counting every process's spend and live leases."""
    tokens, usd = db.execute("SELECT tokens, usd FROM spend").fetchone()
    held_t, held_u = db.execute(
        "SELECT COALESCE(SUM(res_tokens), 0), COALESCE(SUM(res_usd), 0.0) FROM inflight "
        "WHERE key != ? AND expires > ?",
        (key, now),
    ).fetchone()
    if caps[0] is not None and tokens + held_t + reserve[0] > caps[0]:
        return (
            f"token budget reached: {tokens:,} of llm.budget_tokens={caps[0]:,} spent by every "
            f"process on this cache, {held_t:,} reserved, the next call may need {reserve[0]:,}"
        )
    if caps[1] is not None and usd + held_u + reserve[1] > caps[1]:
        return (
            f"dollar budget reached: ${usd:.4f} of llm.budget_usd=${caps[1]:.4f} spent by every "
            f"process on this cache, ${held_u:.4f} reserved, the next call may cost "
            f"${reserve[1]:.4f}"
        )
    return None


class _Tx:
    """``with`` block: the cache's lock plus one ``BEGIN IMMEDIATE`` transaction."""

    def __init__(self, lock: threading.Lock, db: sqlite3.Connection) -> None:
        self.lock, self.db = lock, db

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")  # take the write lock now: claims are atomic
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, exc_type, *rest: object) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
