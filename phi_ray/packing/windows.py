"""Cutting token windows: one key range of documents -> shards, inside a Ray task.

The pack stage range-partitions tokenized documents by their seeded order key; each
partition (a key range and a split) is packed by :func:`pack_group` in a Ray worker, which
sorts its documents by key, joins them with ``<|endoftext|>`` and writes its own shards.
Partitions are ranges of the same key the old single-process sort used, so concatenating
them in partition order is the global seeded order; the only difference is that each
partition drops its own tail (fewer than ``seq_len`` tokens), counted in the manifest.
The driver receives one small row per partition (shard names and counts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from phi_ray.model.tokenizer import EOS_ID
from phi_ray.runs import resolve_fs

UINT16_MAX = int(np.iinfo(np.uint16).max)
KEY_SPACE = 2**63  # order keys are 63-bit hashes


def partition_of(keys: np.ndarray, n_parts: int) -> np.ndarray:
    """The key range (0..n_parts-1) each 63-bit order key falls in; equal-width ranges."""
    width = np.uint64(-(-KEY_SPACE // n_parts))  # ceil; fits uint64 even when n_parts is 1
    return (keys.astype(np.uint64) // width).astype(np.int64)


@dataclass
class WindowWriter:
    """Joins documents with EOS into one stream and cuts windows of seq_len + 1 tokens.

    Consecutive windows share one token (stride ``seq_len``), so every token is a prediction
    target exactly once. Shards are ``<prefix>shard-NNNNN.npy`` uint16 arrays of shape
    (n_windows, seq_len + 1) written under ``out_dir`` (a local path or an object-store URI).
    """

    out_dir: str
    seq_len: int
    windows_per_shard: int
    prefix: str = ""
    buf: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0
    windows: list[np.ndarray] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    n_windows: int = 0
    n_docs: int = 0
    sources: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._fs, self._base = resolve_fs(self.out_dir)
        self._fs.create_dir(self._base, recursive=True)

    def add(self, tokens: np.ndarray, source: str) -> None:
        if tokens.size and int(tokens.max()) > UINT16_MAX:
            raise ValueError(f"pack: token id {int(tokens.max())} does not fit in uint16")
        doc = np.concatenate([tokens.astype(np.uint16), np.array([EOS_ID], np.uint16)])
        self.buf.append(doc)
        self.buffered += doc.size
        self.n_docs += 1
        s = self.sources.setdefault(source, {"docs": 0, "tokens": 0})
        s["docs"] += 1
        s["tokens"] += int(doc.size)
        if self.buffered >= 64 * (self.seq_len + 1):
            self._cut(final=False)

    def _cut(self, final: bool) -> None:
        stream = np.concatenate(self.buf) if self.buf else np.zeros(0, np.uint16)
        n = (stream.size - 1) // self.seq_len if stream.size > self.seq_len else 0
        if n:
            idx = np.arange(n)[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
            self.windows.append(stream[idx])  # (n, seq_len + 1)
        # Keep the last token: it is the first input of the next window.
        rest = stream[n * self.seq_len :]
        self.buf, self.buffered = ([rest], rest.size) if rest.size else ([], 0)
        while sum(w.shape[0] for w in self.windows) >= self.windows_per_shard or (
            final and self.windows
        ):
            self._flush()

    def _flush(self) -> None:
        allw = np.concatenate(self.windows)
        shard, rest = allw[: self.windows_per_shard], allw[self.windows_per_shard :]
        self.windows = [rest] if rest.shape[0] else []
        name = f"{self.prefix}shard-{len(self.shards):05d}.npy"
        with self._fs.open_output_stream(f"{self._base}/{name}") as f:
            np.save(f, np.ascontiguousarray(shard))
        self.shards.append({"file": name, "n_windows": int(shard.shape[0])})
        self.n_windows += int(shard.shape[0])

    def close(self) -> dict[str, Any]:
        """Write the last shard; returns this writer's part of a manifest."""
        self._cut(final=True)
        return {
            "n_windows": self.n_windows,
            "n_docs": self.n_docs,
            "dropped_tail_tokens": max(self.buffered - 1, 0),  # after the last full window
            "shards": self.shards,
            "sources": self.sources,
        }


def manifest(seq_len: int, parts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A split's ``manifest.json`` from its partitions' summaries, in partition order."""
    sources: dict[str, dict[str, int]] = {}
    for p in parts:
        for name, s in p["sources"].items():
            acc = sources.setdefault(name, {"docs": 0, "tokens": 0})
            acc["docs"] += s["docs"]
            acc["tokens"] += s["tokens"]
    n_windows = sum(p["n_windows"] for p in parts)
    return {
        "seq_len": seq_len,
        "window": seq_len + 1,
        "stride": seq_len,
        "dtype": "uint16",
        "eos_id": EOS_ID,
        "n_windows": n_windows,
        "n_tokens": n_windows * seq_len,  # prediction targets
        "n_docs": sum(p["n_docs"] for p in parts),
        "dropped_tail_tokens": sum(p["dropped_tail_tokens"] for p in parts),
        "shards": [s for p in parts for s in p["shards"]],
        "sources": sources,
        **extra,
    }


def write_manifest(out_dir: str, obj: dict[str, Any]) -> None:
    fs, base = resolve_fs(out_dir)
    with fs.open_output_stream(f"{base}/manifest.json") as f:
        f.write(json.dumps(obj, indent=1, sort_keys=True).encode())


def pack_group(
    batch: dict[str, np.ndarray], out_root: str, seq_len: int, windows_per_shard: int
) -> dict[str, np.ndarray]:
    """``map_groups`` function: all documents of one (partition, split) -> shards + 1 row.

    Holds one partition (``pack.tokens_per_partition`` tokens at most, by construction), never
    the corpus. Shard names carry the partition so workers never collide.
    """
    group = int(batch["group"][0])
    part, is_val = divmod(group, 2)
    split = "val" if is_val else "train"
    order = np.argsort(batch["key"], kind="stable")  # keys are unique hashes of ids
    writer = WindowWriter(
        f"{out_root}/{split}", seq_len, windows_per_shard, prefix=f"part-{part:05d}-"
    )
    empty = 0
    for i in order:
        toks = np.asarray(batch["tokens"][i])
        if toks.size == 0:
            empty += 1
            continue
        writer.add(toks, str(batch["source"][i]))
    summary = writer.close()
    summary["empty_text"] = empty
    return {
        "part": np.array([part]),
        "split": np.array([split], dtype=object),
        "summary": np.array([json.dumps(summary)], dtype=object),
    }


def assign_groups(batch: pa.Table, n_parts: int) -> pa.Table:
    """``map_batches`` function (Arrow in, Arrow out, so the token lists stay an Arrow list
    column): a (partition, split) group id per document."""
    part = partition_of(batch.column("key").to_numpy(), n_parts)
    val = batch.column("val").to_numpy(zero_copy_only=False).astype(np.int64)
    return batch.append_column("group", pa.array(part * 2 + val))


def ensure_dirs(out_root: str, splits: tuple[str, ...]) -> None:
    """Both split directories exist even when a split has no document."""
    fs, base = resolve_fs(out_root)
    for split in splits:
        fs.create_dir(f"{base}/{split}", recursive=True)


__all__ = [
    "KEY_SPACE",
    "UINT16_MAX",
    "WindowWriter",
    "assign_groups",
    "ensure_dirs",
    "manifest",
    "pack_group",
    "partition_of",
    "write_manifest",
]
