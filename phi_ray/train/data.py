"""Token windows from ``pack``'s shards, memory-mapped, in an order that is a pure function.

The sample at global position ``p`` (counting sequences from the start of training) is
window ``perm(seed, epoch)[p % n]`` with ``epoch = p // n``: a fresh seeded permutation per
epoch. Optimizer step ``s`` consumes positions ``[s * G, (s + 1) * G)`` (``G`` = global
batch), rank ``r`` of ``W`` takes the contiguous slice ``r * G/W ... (r+1) * G/W`` of it,
cut into micro-batches. So the data a step sees depends only on (seed, step) and not on
the number of workers, how many times the run was resumed, or where it was interrupted:
a resumed run continues with exactly the batches an uninterrupted run would have used,
and 2 workers see the same global batch as 1 worker with twice the accumulation.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

CACHE_ENV = "PHI_RAY_NODE_CACHE"  # where object-store copies go on each node
_TMP = ".tmp-"
# A copy unused this long is removed by the next copier on the node: finished runs do not
# keep their (up to ~100 GB) token copies on every node forever. A run reads its copy
# when its workers start; if one is removed under it, the open mmaps keep the data alive.
UNUSED_TTL_S = 24 * 3600


def node_cache_dir() -> str:
    """This node's directory for copies of object-store data: ``$PHI_RAY_NODE_CACHE``, else
    ``<tmp>/phi-ray-cache``. One per node (not per process), so workers share copies."""
    return os.environ.get(CACHE_ENV) or os.path.join(tempfile.gettempdir(), "phi-ray-cache")


def _identity(uri: str) -> tuple[str, list]:
    """(a key that changes whenever the source directory's content does, its file list).

    The key folds in every file's name, size and modification time (an object store's
    mtime is the upload time: a rewritten split always changes it) and the bytes of its
    ``manifest.json``, so a repacked split is copied afresh, never served from a stale copy.
    """
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    files = sorted(
        (i.path[len(root) :].lstrip("/"), i.size, i.mtime_ns or 0)
        for i in infos
        if i.type == pafs.FileType.File
    )
    if not files:
        raise FileNotFoundError(f"{uri}: no such directory, or it is empty")
    h = hashlib.sha256(uri.encode())
    for name, size, mtime in files:
        h.update(f"\0{name}\0{size}\0{mtime}".encode())
        if name == "manifest.json":
            with fs.open_input_stream(f"{root}/{name}") as f:
                h.update(f.read())
    return h.hexdigest()[:20], files


def _copy_dir(uri: str, files: list, dest: str) -> None:
    """Copy ``files`` (from :func:`_identity`) of ``uri`` into the new directory ``dest``,
    checking each size; ``manifest.json`` last, so a copy without it is visibly partial."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    local = pafs.LocalFileSystem()
    for name, size, _ in sorted(files, key=lambda f: f[0] == "manifest.json"):
        target = os.path.join(dest, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        pafs.copy_files(
            f"{root}/{name}", target, source_filesystem=fs, destination_filesystem=local
        )
        if os.path.getsize(target) != size:
            raise OSError(f"{uri}/{name}: copied {os.path.getsize(target)} of {size} bytes")


@contextlib.contextmanager
def _node_lock(cache: str):
    """An exclusive lock shared by every process on this node that uses ``cache``.

    ``flock`` is released by the kernel when its holder dies, so a killed copier never
    leaves the lock held; whatever it was writing is then an orphan (see :func:`localize`).
    """
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _use(dest: str) -> bool:
    """Whether the copy ``dest`` exists; if so, mark it used now (its mtime)."""
    try:
        os.utime(dest)
    except FileNotFoundError:
        return False
    return True


def _evict(cache: str, slug: str) -> None:
    """Under the node lock: remove dead copiers' ``.tmp-`` directories, older versions of
    the source ``slug``, and copies unused for :data:`UNUSED_TTL_S`."""
    now = time.time()
    for name in os.listdir(cache):
        path = os.path.join(cache, name)
        if name.startswith("."):
            if name.startswith(_TMP):
                shutil.rmtree(path, ignore_errors=True)
            continue
        with contextlib.suppress(FileNotFoundError):
            if name.startswith(f"{slug}-") or now - os.stat(path).st_mtime > UNUSED_TTL_S:
                shutil.rmtree(path, ignore_errors=True)


def localize(path: str, cache: str | None = None) -> str:
    """A local directory with the content of ``path``: itself, or this node's copy of a
    ``s3://`` / ``gs://`` directory (a token split, an exported model).

    One copy per node and source version, shared by every worker on the node: the first
    process to get the node lock copies into a unique ``.tmp-`` name and renames it into
    place; the others wait on the lock, then find the finished copy. Under the lock no
    other copy can be in flight, so any ``.tmp-`` directory left there belongs to a copier
    that died: it is removed, as are older versions of the same source (a process still
    reading one keeps its open files; Linux frees them on close), as are copies no run has
    used for a day.
    """
    if "://" not in path:
        return path
    cache = cache or node_cache_dir()
    key, files = _identity(path)
    slug = hashlib.sha256(path.encode()).hexdigest()[:12]  # the source, across versions
    dest = os.path.join(cache, f"{slug}-{key}")
    if _use(dest):  # renamed into place only when complete
        return dest
    with _node_lock(cache):
        if _use(dest):
            return dest
        _evict(cache, slug)
        tmp = os.path.join(cache, f"{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            _copy_dir(path, files, tmp)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest


class TokenWindows:
    """All windows of one split (``pack/<phase>/<split>/``), memory-mapped, shape (n, T+1)."""

    def __init__(self, path: str) -> None:
        self.path = localize(path)
        mpath = os.path.join(self.path, "manifest.json")
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"{mpath}: no token manifest; run `phi-ray pack` first")
        with open(mpath) as f:
            self.manifest = json.load(f)
        self.seq_len = int(self.manifest["seq_len"])
        self.shards = [
            np.load(os.path.join(self.path, s["file"]), mmap_mode="r")
            for s in self.manifest["shards"]
        ]
        sizes = [s.shape[0] for s in self.shards]
        self.offsets = np.cumsum([0, *sizes])  # shard k holds windows offsets[k]..offsets[k+1]
        self.n = int(self.offsets[-1])

    def __len__(self) -> int:
        return self.n

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Windows at global indices ``idx`` -> int64 array (len(idx), seq_len + 1)."""
        shard = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((len(idx), self.seq_len + 1), dtype=np.int64)
        for k in np.unique(shard):
            sel = shard == k
            out[sel] = self.shards[k][idx[sel] - self.offsets[k]]
        return out


@lru_cache(maxsize=4)
def _perm(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


@dataclass(frozen=True)
class BatchPlan:
    """Which windows each (step, rank, micro-batch) trains on. See the module docstring."""

    n: int  # windows in the split
    seed: int
    global_batch: int
    world_size: int
    micro_batch: int

    @property
    def accum(self) -> int:
        """Micro-batches per optimizer step on each worker (gradient accumulation)."""
        return self.global_batch // (self.world_size * self.micro_batch)

    def indices(self, step: int, rank: int, micro: int) -> np.ndarray:
        """Window indices of micro-batch ``micro`` of ``rank`` at optimizer step ``step``."""
        per_rank = self.global_batch // self.world_size
        start = step * self.global_batch + rank * per_rank + micro * self.micro_batch
        pos = np.arange(start, start + self.micro_batch, dtype=np.int64)
        epochs = pos // self.n
        out = np.empty_like(pos)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = _perm(self.seed, int(e), self.n)[pos[sel] % self.n]
        return out

    def epoch(self, step: int) -> float:
        return step * self.global_batch / self.n


def eval_indices(n: int, rank: int, world_size: int, micro_batch: int, batches: int) -> list:
    """Validation micro-batches of one rank: the first ``batches * micro * W`` windows, fixed."""
    total = min(n, batches * micro_batch * world_size)
    mine = np.arange(rank, total, world_size)
    return [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]
