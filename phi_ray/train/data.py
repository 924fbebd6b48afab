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

import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def localize(path: str) -> str:
    """A local directory for a split: itself, or a copy of a ``s3://`` / ``gs://`` one."""
    if "://" not in path:
        return path
    import pyarrow.fs as pafs

    dest = os.path.join(tempfile.gettempdir(), "phi-ray-tokens", path.replace("://", "/"))
    if not os.path.exists(os.path.join(dest, "manifest.json")):
        src_fs, src = pafs.FileSystem.from_uri(path)
        tmp = f"{dest}.tmp-{os.getpid()}"
        pafs.copy_files(src, tmp, source_filesystem=src_fs)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(tmp, dest)
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
