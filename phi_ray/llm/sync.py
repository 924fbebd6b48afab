"""The response cache of an object-store run: a local working copy, synced to the run.

SQLite needs a local file with working locks, which S3 and GCS are not. So for an
``s3://`` / ``gs://`` run the cache is a working copy on local disk, under
``$TMPDIR/phi_ray_llm/<hash of the run's .work/<stage> URI>/``, and the run's
``.work/<stage>/llm_cache.sqlite`` object is its durable home:

- **restore** (client start): the object's answers are merged into the working copy
  (``INSERT OR IGNORE``: nothing the working copy has is lost, nothing is taken twice);
- **push** (every ``llm.cache_sync_s`` seconds when something changed, and at close): a
  consistent snapshot (SQLite's online backup) is uploaded, after merging in whatever
  another host pushed since this one last looked.

A replaced head node therefore loses at most the answers of the last interval. Clients of
one stage on one host share the working copy (the path depends only on the URI), so the
cross-process dedup of :mod:`phi_ray.llm.cache` holds between them; clients on different
hosts share answers through the object, not leases.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import threading

import pyarrow.fs as pafs

from phi_ray.llm.cache import FILENAME, ResponseCache, migrate
from phi_ray.runs import resolve_fs

log = logging.getLogger("phi_ray.llm")

_CHUNK = 8 << 20


def local_copy_dir(uri: str) -> str:
    """Where the working copy of the cache at ``uri`` lives on this host."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "phi_ray_llm", digest)


class CacheSync:
    """Restore, periodically push, and finally push one cache directory URI."""

    def __init__(self, uri: str, interval_s: float) -> None:
        self.uri = f"{uri.rstrip('/')}/{FILENAME}"
        self.fs, self.remote = resolve_fs(self.uri)
        self.dir = local_copy_dir(uri)
        self.local = os.path.join(self.dir, FILENAME)
        self.interval_s = interval_s
        self.pushes = 0
        self._seen: tuple[int, int] | None = None  # the object as of our last look
        self._pushed: tuple | None = None  # the working copy as of our last push
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- restore ----------------------------------------------------------------------------
    def restore(self) -> str:
        """Merge the object's answers into the working copy; return its directory."""
        os.makedirs(self.dir, exist_ok=True)
        with self._lock:
            n = self._merge_remote()
        log.info("LLM cache for %s: working copy %s (%d answers restored)", self.uri, self.local, n)
        return self.dir

    def _info(self) -> tuple[int, int] | None:
        info = self.fs.get_file_info(self.remote)
        if info.type == pafs.FileType.NotFound:
            return None
        return info.size, info.mtime_ns or 0

    def _merge_remote(self) -> int:
        info = self._info()
        if info is None or info == self._seen:
            return 0
        fd, tmp = tempfile.mkstemp(prefix=".remote-", suffix=".sqlite", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f, self.fs.open_input_stream(self.remote) as src:
                while chunk := src.read(_CHUNK):
                    f.write(chunk)
            return self._merge_file(tmp, info)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _merge_file(self, path: str, info: tuple[int, int]) -> int:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            migrate(other)  # an older snapshot may lack newer columns
        finally:
            other.close()
        db = sqlite3.connect(self.local, timeout=60.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            migrate(db)
            cols = ", ".join(r[1] for r in db.execute("PRAGMA table_info(responses)"))
            db.execute("ATTACH DATABASE ? AS remote", (path,))
            db.execute("BEGIN IMMEDIATE")
            before = db.total_changes
            db.execute(
                f"INSERT OR IGNORE INTO main.responses ({cols}) SELECT {cols} FROM remote.responses"
            )
            db.execute("COMMIT")
            self._seen = info
            return db.total_changes - before
        finally:
            db.close()

    # -- push -------------------------------------------------------------------------------
    def start(self, cache: ResponseCache) -> None:
        """Push every ``interval_s`` seconds in a daemon thread (``0``: only at close)."""
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name="phi-ray-llm-sync", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.push()
            except Exception as e:  # a failed upload must not stop the stage: retry later
                log.warning("LLM cache sync to %s failed (will retry): %s", self.uri, e)

    def stop(self) -> None:
        """Stop the periodic pushes and push once more (the close-time sync)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        try:
            self.push()
        except Exception as e:
            log.error(
                "LLM cache: final sync to %s failed: %s (local copy %s)", self.uri, e, self.local
            )

    def _state(self) -> tuple:
        db = sqlite3.connect(self.local, timeout=60.0)
        try:
            return db.execute(
                "SELECT COUNT(*), MAX(created_at), SUM(status = 'raw') FROM responses"
            ).fetchone()
        finally:
            db.close()

    def push(self) -> bool:
        """Upload a snapshot of the working copy if it changed; True if one was uploaded."""
        with self._lock:
            self._merge_remote()  # what another host pushed since we last looked
            state = self._state()
            if state == self._pushed and self._info() is not None:
                return False
            fd, snap = tempfile.mkstemp(prefix=".snap-", suffix=".sqlite", dir=self.dir)
            os.close(fd)
            try:
                src = sqlite3.connect(self.local, timeout=60.0)
                dst = sqlite3.connect(snap)
                try:
                    src.backup(dst)  # a consistent copy while writers go on
                finally:
                    dst.close()
                    src.close()
                with open(snap, "rb") as f, self.fs.open_output_stream(self.remote) as out:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(snap)
            self._seen, self._pushed = self._info(), state
            self.pushes += 1
            return True
