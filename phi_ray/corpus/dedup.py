"""Exact and near deduplication, distributed with Ray Data.

Exact: only narrow columns travel. ``(id, path, repo, row_hash)`` rows (``row_hash`` a
per-row key from the Parquet reader) are hash-partitioned on ``id`` with
``Dataset.repartition(keys=["id"], sort=True)``, so every copy of a file lands in the same
block; one vectorised pass per block keeps the first copy by (id, path, repo) and emits the
*other* copies' row keys (8 bytes each). The wide rows, content included, never go through
the all-to-all shuffle: the final pass filters them against those keys where they lie.

Near (MinHash LSH, BigCode): each document contributes one row per band, ``(key, uid)``.
The rows are hash-partitioned on the band key, so a bucket lives whole in one block; each
block emits star edges ``(smallest uid in bucket, other uid)`` for buckets of two or more.
The same pair recurs across bands (and so across blocks), so the edges are hash-partitioned
again on ``src`` and made distinct per block: every distinct edge reaches the driver once
(16 bytes each, documents that *have* a near duplicate only), where
``scipy.sparse.csgraph.connected_components`` finds the clusters. Each cluster keeps its
smallest uid; the others' uids (8 bytes each) go back to the workers as one object that the
final pass filters against.

Edges, components and the removed uids grow with the number of duplicates, and so with
the corpus (tens of millions of edges on The Stack). None of them passes through the
stage's driver: they are gathered and solved in one Ray task (:func:`off_driver`, zero
CPUs, like a driver, scheduled where the cluster has room), whose result stays in the
object store; the driver holds a reference and a count.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger("phi_ray.corpus")


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
    """Keep one row per content hash; distributed (hash shuffle on ``id``).

    This shuffles whole rows; the ingest stage uses ``exact_losers`` instead, which moves
    only narrow columns. Kept for small datasets where one pass is simpler."""
    return ds.repartition(num_partitions, keys=["id"], sort=True).map_batches(
        keep_first_per_id, batch_size=None, batch_format="pyarrow"
    )


def losers_per_id(block: pa.Table, key: str = "row_hash") -> pa.Table:
    """The ``key`` of every row but the first per ``id`` (by id, path, repo) in a block that
    holds whole id groups; the complement of ``keep_first_per_id``."""
    if block.num_rows == 0:
        return pa.table({key: pa.array([], type=pa.uint64())})
    block = block.sort_by([("id", "ascending"), ("path", "ascending"), ("repo", "ascending")])
    ids = block.column("id").to_numpy(zero_copy_only=False)
    later = np.zeros(len(ids), dtype=bool)
    later[1:] = ids[1:] == ids[:-1]
    return pa.table({key: block.column(key).filter(pa.array(later)).cast(pa.uint64())})


def exact_losers(ds: Any, num_partitions: int, key: str = "row_hash") -> Any:
    """A dataset of the ``key`` of every row that exact dedup drops (all copies of a content
    hash but the first by path, repo). Only ``id, path, repo, key`` are shuffled."""
    return (
        ds.select_columns(["id", "path", "repo", key])
        .repartition(num_partitions, keys=["id"], sort=True)
        .map_batches(losers_per_id, batch_size=None, batch_format="pyarrow", fn_kwargs={"key": key})
    )


def sorted_keys(ds: Any, column: str) -> np.ndarray:
    """One uint64 column of a (narrow) dataset as a sorted array on the driver."""
    parts = [
        b[column].astype(np.uint64)
        for b in ds.iter_batches(batch_format="numpy", batch_size=None)
        if len(b[column])
    ]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


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


def distinct_edges_block(block: pa.Table) -> pa.Table:
    """The distinct (src, dst) pairs of a block (one that holds every copy of its pairs)."""
    src = block.column("src").to_numpy(zero_copy_only=False).astype(np.uint64)
    dst = block.column("dst").to_numpy(zero_copy_only=False).astype(np.uint64)
    if len(src) == 0:
        return pa.table({"src": src, "dst": dst})
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    new = np.ones(len(src), dtype=bool)
    new[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return pa.table({"src": src[new], "dst": dst[new]})


def near_duplicate_edges(ds: Any, num_partitions: int) -> Any:
    """A dataset of the distinct (src, dst) uid edges between documents sharing an LSH
    bucket: each pair once, however many bands (and so blocks) produced it."""
    return (
        ds.select_columns(["uid", "bands"])
        .map_batches(explode_bands, batch_format="pyarrow")
        .repartition(num_partitions, keys=["key"], sort=True)
        .map_batches(bucket_edges, batch_size=None, batch_format="pyarrow")
        # Local distinct first: most repeats of a pair come from bands in the same block.
        .map_batches(distinct_edges_block, batch_size=None, batch_format="pyarrow")
        .repartition(num_partitions, keys=["src"])  # every copy of a pair in one block
        .map_batches(distinct_edges_block, batch_size=None, batch_format="pyarrow")
    )


def collect_edges(edges_ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bring the (already distinct) edges to the driver: gathered once, no re-sorting per
    block. Repeated pairs, were any left, would not change the components."""
    src_parts, dst_parts = [], []
    for batch in edges_ds.iter_batches(batch_format="numpy", batch_size=None):
        if len(batch["src"]):
            src_parts.append(batch["src"].astype(np.uint64))
            dst_parts.append(batch["dst"].astype(np.uint64))
    if not src_parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return np.concatenate(src_parts), np.concatenate(dst_parts)


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


def in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``values`` occur in the sorted array ``sorted_set``."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.clip(np.searchsorted(sorted_set, values), 0, len(sorted_set) - 1)
    return sorted_set[pos] == values


def drop_uids(
    batch: pa.Table,
    removed: np.ndarray,
    columns: list[str],
    losers: np.ndarray | None = None,
    key: str = "row_hash",
) -> pa.Table:
    """Rows whose uid is not in the sorted ``removed`` array (and, when given, whose ``key``
    is not in the sorted ``losers`` array), projected to ``columns``."""
    drop = in_sorted(batch.column("uid").to_numpy(zero_copy_only=False), removed)
    if losers is not None and len(losers):
        drop |= in_sorted(batch.column(key).to_numpy(zero_copy_only=False), losers)
    if drop.any():
        batch = batch.filter(pa.array(~drop))
    return batch.select(columns)


def _drop_removed_ref(batch: pa.Table, ref: Any) -> pa.Table:
    import ray

    removed = ray.get(ref)  # one object-store copy shared by the tasks of a node
    # uid may be int64 (non-negative): compare as uint64, never through float64.
    uid = batch.column("uid").to_numpy(zero_copy_only=False).astype(np.uint64)
    pos = np.clip(np.searchsorted(removed, uid), 0, len(removed) - 1)
    return batch.filter(pa.array(removed[pos] != uid))


def off_driver(fn: Any, *args: Any) -> tuple[Any, Any]:
    """Run ``fn(*args) -> (array, meta)`` in a zero-CPU Ray task; returns ``(ref, meta)``.

    The array stays in the object store (the driver never fetches it); only ``meta``, a
    few counts, comes back. Datasets passed in execute inside the task.
    """
    import ray

    task = ray.remote(num_cpus=0, num_returns=2, max_retries=1)(fn)
    ref, meta_ref = task.remote(*args)
    return ref, ray.get(meta_ref)


def near_removed(ds: Any, num_partitions: int, save: Any = None) -> tuple[np.ndarray, dict]:
    """The sorted uids that near dedup removes from ``ds`` (see the module docstring), and
    ``{"edges", "removed"}``; ``save(array)``, when given, persists the array first. Runs
    wherever it is called: through :func:`off_driver` for a stage."""
    src, dst = collect_edges(near_duplicate_edges(ds, num_partitions))
    removed = duplicates_to_remove(src, dst)
    if save is not None:
        save(removed)
    return removed, {"edges": len(src), "removed": len(removed)}


def remove_near_duplicates(ds: Any, num_partitions: int) -> tuple[Any, int]:
    """``ds`` minus its near duplicates, and how many rows that removed.

    The shared near-dedup (ingest's, used by synth too): ``ds`` needs a ``uid`` column
    (uint64-compatible, unique per row) and a ``bands`` column of LSH band keys
    (:func:`phi_ray.corpus.minhash.band_key_lists`). Rows sharing a bucket are linked;
    each connected component keeps its smallest uid. ``ds`` is executed twice (edges,
    then the filter): pass one read from storage, not an expensive pipeline.
    """
    ref, meta = off_driver(near_removed, ds, num_partitions)
    if not meta["removed"]:
        return ds, 0
    return ds.map_batches(_drop_removed_ref, batch_format="pyarrow", fn_kwargs={"ref": ref}), meta[
        "removed"
    ]
