"""Exact and near deduplication, distributed with Ray Data.

Exact: rows are hash-partitioned on ``id`` (sha256 of the content) with
``Dataset.repartition(keys=["id"], sort=True)``, so every copy of a file lands in the same
block, sorted; one vectorised pass per block keeps the first copy by (id, path, repo). No
id list ever reaches the driver, and the representative is the same on every rerun.

Near (MinHash LSH, BigCode): each document contributes one row per band, ``(key, uid)``.
The rows are hash-partitioned on the band key, so a bucket lives whole in one block; each
block emits star edges ``(smallest uid in bucket, other uid)`` for buckets of two or more.
Only those edges (documents that *have* a near duplicate; 16 bytes each, compacted as they
stream in) reach the driver, where ``scipy.sparse.csgraph.connected_components`` finds the
clusters. Each cluster keeps its smallest uid; the others' uids (8 bytes each) go back to
the workers as one object that the final pass filters against.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger("phi_ray.corpus")
_COMPACT_EVERY = 4_000_000  # edges buffered on the driver before de-duplicating them


def keep_first_per_id(block: pa.Table) -> pa.Table:
    """One row per ``id`` in a block that holds whole id groups (after hash partitioning)."""
    if block.num_rows == 0:
        return block
    block = block.sort_by([("id", "ascending"), ("path", "ascending"), ("repo", "ascending")])
    ids = block.column("id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    return block.filter(pa.array(first))


def exact_dedup(ds: Any, num_partitions: int) -> Any:
    """Keep one row per content hash; distributed (hash shuffle on ``id``)."""
    return ds.repartition(num_partitions, keys=["id"], sort=True).map_batches(
        keep_first_per_id, batch_size=None, batch_format="pyarrow"
    )


def explode_bands(batch: pa.Table) -> pa.Table:
    """(uid, [key_0..key_b)) rows -> one (key, uid) row per band."""
    bands = batch.column("bands")
    lengths = pc.list_value_length(bands).to_numpy(zero_copy_only=False)
    keys = pc.list_flatten(bands).to_numpy(zero_copy_only=False)
    uids = np.repeat(batch.column("uid").to_numpy(zero_copy_only=False), lengths)
    return pa.table({"key": keys.astype(np.uint64), "uid": uids.astype(np.uint64)})


def bucket_edges(block: pa.Table) -> pa.Table:
    """Star edges (bucket minimum -> member) for every bucket with two or more members."""
    key = block.column("key").to_numpy(zero_copy_only=False)
    uid = block.column("uid").to_numpy(zero_copy_only=False)
    order = np.lexsort((uid, key))  # by key, then uid: each bucket's first row is its min
    key, uid = key[order], uid[order]
    start = np.ones(len(key), dtype=bool)
    start[1:] = key[1:] != key[:-1]
    head = uid[start][np.cumsum(start) - 1]  # (n,): the min uid of each row's bucket
    other = uid != head
    return pa.table({"src": head[other], "dst": uid[other]})


def near_duplicate_edges(ds: Any, num_partitions: int) -> Any:
    """A dataset of (src, dst) uid edges between documents sharing an LSH bucket."""
    return (
        ds.select_columns(["uid", "bands"])
        .map_batches(explode_bands, batch_format="pyarrow")
        .repartition(num_partitions, keys=["key"], sort=True)
        .map_batches(bucket_edges, batch_size=None, batch_format="pyarrow")
    )


def _unique_edges(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.unique(np.stack([src, dst], axis=1), axis=0)  # (m, 2)
    return pairs[:, 0], pairs[:, 1]


def collect_edges(edges_ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Stream the edges to the driver, de-duplicating as they come (bands repeat edges)."""
    src_parts, dst_parts, buffered = [], [], 0
    for batch in edges_ds.iter_batches(batch_format="numpy", batch_size=None):
        if len(batch["src"]):
            src_parts.append(batch["src"].astype(np.uint64))
            dst_parts.append(batch["dst"].astype(np.uint64))
            buffered += len(batch["src"])
        if buffered > _COMPACT_EVERY:
            s, d = _unique_edges(np.concatenate(src_parts), np.concatenate(dst_parts))
            src_parts, dst_parts, buffered = [s], [d], len(s)
    if not src_parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return _unique_edges(np.concatenate(src_parts), np.concatenate(dst_parts))


def duplicates_to_remove(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Sorted uids to drop: every node of each connected component except its minimum."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(src) == 0:
        return np.zeros(0, dtype=np.uint64)
    nodes, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)  # sorted uids
    m = len(src)
    graph = coo_matrix((np.ones(m, dtype=np.int8), (inv[:m], inv[m:])), shape=(len(nodes),) * 2)
    _, labels = connected_components(graph, directed=False)
    _, first = np.unique(labels, return_index=True)  # nodes are sorted: first == min uid
    keep = np.zeros(len(nodes), dtype=bool)
    keep[first] = True
    return nodes[~keep]


def drop_uids(batch: pa.Table, removed: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows whose uid is not in the sorted ``removed`` array, projected to ``columns``."""
    if len(removed):
        uid = batch.column("uid").to_numpy(zero_copy_only=False)
        pos = np.clip(np.searchsorted(removed, uid), 0, len(removed) - 1)
        batch = batch.filter(pa.array(removed[pos] != uid))
    return batch.select(columns)
