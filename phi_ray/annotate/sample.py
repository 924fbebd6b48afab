"""A stratified, deterministic sample of the corpus for annotation, drawn in Ray.

Strata are (source, size bucket by ``n_chars``), so that rare sources and very short or
very long files are represented, as the classifier will later score all of them. Each
stratum gets a share proportional to its size (largest remainder), and at least one row
when the sample is big enough. Inside a stratum, rows are ranked by sha256(seed, id): the
sample is the same on every rerun, and a larger ``sample_size`` extends the smaller
sample instead of redrawing it (so every answer already paid for is reused).

Nothing that grows with the corpus reaches the driver (a 30M-row corpus held as Python
tuples was ~15 GB): Ray tasks compute each row's stratum and 64-bit rank and count rows
per stratum (per-block partials summed on the driver: blocks x strata rows, no shuffle).
The per-stratum quota ``k_s`` becomes a rank threshold ``t_s = k_s / count_s`` of the
2^64 range. Only *candidates*, rows below
``~1.5 t_s`` (id, stratum, rank: about 1.5x the sample), come to the driver, which keeps the
``k_s`` smallest ranks per stratum: the sample is exact, not just its expected size. Should
a stratum get too few candidates (chance, or duplicate ids), its threshold grows and the
pass repeats. A last Ray pass reads the content of the chosen rows only.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from phi_ray.runs import resolve_fs

CORPUS_COLUMNS = ("id", "content", "path", "source", "n_chars")
_KEY_COLUMNS = ["id", "source", "n_chars"]
_RANGE = 2**64  # ranks are the first 8 bytes of sha256(seed:id), as unsigned integers
_FULL = _RANGE - 1  # an inclusive limit that takes a whole stratum (fits a uint64)
# Candidate thresholds aim at 1.5x a stratum's quota plus this many rows, so that small
# quotas (1-2 rows) are rarely short of candidates and re-passes stay rare.
_OVERSAMPLE = 1.5
_SLACK_ROWS = 8


def open_corpus(path: str) -> pads.Dataset:
    """The ingest stage's ``corpus/`` Parquet files (local path or URI), columns checked."""
    fs, p = resolve_fs(path)
    ds = pads.dataset(p, format="parquet", filesystem=fs)
    missing = [c for c in CORPUS_COLUMNS if c not in ds.schema.names]
    if missing:
        raise ValueError(f"{path}: corpus Parquet lacks columns {missing} (has {ds.schema.names})")
    return ds


def size_bucket(n_chars: int, bounds: list[int]) -> str:
    i = bisect.bisect_right(bounds, n_chars)
    lo = bounds[i - 1] if i > 0 else 0
    return f"{lo}+" if i == len(bounds) else f"{lo}-{bounds[i]}"


def _allocate(sizes: dict[str, int], total: int) -> dict[str, int]:
    n = sum(sizes.values())
    if total >= n:
        return dict(sizes)
    floor_one = total >= len(sizes)
    quota = {k: total * v / n for k, v in sizes.items()}
    alloc = {k: min(sizes[k], max(int(quota[k]), 1 if floor_one else 0)) for k in sizes}
    left = total - sum(alloc.values())
    # Largest remainders first; ties broken by stratum name so the result is stable.
    order = sorted(sizes, key=lambda k: (-(quota[k] - int(quota[k])), k))
    while left > 0:
        moved = False
        for k in order:
            if left and alloc[k] < sizes[k]:
                alloc[k] += 1
                left -= 1
                moved = True
        if not moved:
            break
    while left < 0:  # the floor of one overshot: take back from the biggest strata
        k = max(alloc, key=lambda s: (alloc[s] - quota[s], s))
        alloc[k] -= 1
        left += 1
    return alloc


def _keys(batch: pa.Table, bounds: list[int], seed: int) -> pa.Table:
    """(id, stratum "source|bucket", rank uint64) for every row of a corpus batch."""
    ids = batch.column("id").to_pylist()
    ranks = [
        int.from_bytes(hashlib.sha256(f"{seed}:{rid}".encode()).digest()[:8], "big") for rid in ids
    ]
    strata = [
        f"{s}|{size_bucket(int(n or 0), bounds)}"
        for s, n in zip(
            batch.column("source").to_pylist(), batch.column("n_chars").to_pylist(), strict=True
        )
    ]
    return pa.table(
        {"id": pa.array(ids, pa.string()), "stratum": strata, "rank": pa.array(ranks, pa.uint64())}
    )


def _count_block(batch: pa.Table) -> pa.Table:
    """(stratum, rows) of one block."""
    c = batch.group_by("stratum").aggregate([("stratum", "count")])
    return c.select(["stratum", "stratum_count"])


def _below(batch: pa.Table, limits: dict[str, int]) -> pa.Table:
    """Rows whose rank is <= their stratum's limit (strata without a quota: none)."""
    names = list(limits)
    where = pc.index_in(batch.column("stratum"), value_set=pa.array(names, pa.string()))
    lim = np.array([limits[s] for s in names] + [0], dtype=np.uint64)
    idx = where.to_numpy(zero_copy_only=False)
    idx = np.where(np.isnan(idx.astype(float)), len(names), idx).astype(np.int64)
    keep = (batch.column("rank").to_numpy(zero_copy_only=False) <= lim[idx]) & (idx < len(names))
    return batch.filter(pa.array(keep, pa.bool_()))


def _pick(batch: pa.Table, chosen: dict[str, str], bounds: list[int], seed: int) -> pa.Table:
    """The corpus rows that are the chosen (id, stratum) pairs."""
    cand = batch.filter(pc.is_in(batch["id"], value_set=pa.array(list(chosen), pa.string())))
    if not cand.num_rows:
        return cand.select(list(CORPUS_COLUMNS))
    strata = _keys(cand, bounds, seed).column("stratum").to_pylist()
    ok = [chosen[i] == s for i, s in zip(cand.column("id").to_pylist(), strata, strict=True)]
    return cand.filter(pa.array(ok, pa.bool_())).select(list(CORPUS_COLUMNS))


def _candidate_limit(quota: int, count: int, factor: float) -> int:
    if quota >= count:
        return _FULL  # the whole stratum
    p = factor * (_OVERSAMPLE * quota + _SLACK_ROWS) / count
    return _FULL if p >= 1.0 else int(p * _RANGE)


def _collect(ds: Any) -> pa.Table | None:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


def stratified_sample(
    corpus_dir: str, size: int, bounds: list[int], seed: int
) -> tuple[pa.Table, dict[str, int]]:
    """(rows of the sample with CORPUS_COLUMNS sorted by id, rows per stratum "source|bucket")."""
    import ray

    empty = open_corpus(corpus_dir).schema.empty_table().select(list(CORPUS_COLUMNS))
    fs, path = resolve_fs(corpus_dir)
    keys = (
        ray.data.read_parquet(path, filesystem=fs, columns=_KEY_COLUMNS)
        .map_batches(_keys, fn_kwargs={"bounds": bounds, "seed": seed}, batch_format="pyarrow")
        .materialize()  # narrow (id, stratum, rank): read by the counts and every pass
    )
    # Per-block (stratum, rows) partials summed here: #blocks x #strata rows, and no
    # shuffle (a groupby starts aggregator actors, seconds on a small run).
    sizes: dict[str, int] = {}
    counts = _collect(keys.map_batches(_count_block, batch_format="pyarrow", batch_size=None))
    if counts is not None:
        for s, n in zip(*counts.to_pydict().values(), strict=True):
            sizes[s] = sizes.get(s, 0) + int(n)
    alloc = {k: v for k, v in _allocate(sizes, size).items() if v > 0}
    chosen: dict[str, str] = {}  # id -> stratum, in stratum order
    factor = 1.0
    todo = dict(alloc)
    while todo:
        limits = {s: _candidate_limit(todo[s], sizes[s], factor) for s in todo}
        cand = _collect(keys.map_batches(_below, fn_kwargs={"limits": limits},
                                         batch_format="pyarrow"))  # fmt: skip
        by_stratum: dict[str, list[tuple[int, str]]] = {s: [] for s in todo}
        if cand is not None:
            for rid, s, r in zip(*cand.select(["id", "stratum", "rank"]).to_pydict().values(),
                                 strict=True):  # fmt: skip
                by_stratum[s].append((r, rid))
        short: dict[str, int] = {}
        for s in sorted(todo):
            picked: list[str] = []
            for _, rid in sorted(set(by_stratum[s])):  # duplicate ids: one row each
                if len(picked) == todo[s]:
                    break
                if rid not in chosen and rid not in picked:
                    picked.append(rid)
            if len(picked) < todo[s] and limits[s] < _FULL:
                short[s] = todo[s]  # too few candidates: redo with a higher threshold
            else:
                chosen |= dict.fromkeys(picked, s)
        todo, factor = short, factor * 4
    if not chosen:
        return empty, {}
    rows = ray.data.read_parquet(path, filesystem=fs, columns=list(CORPUS_COLUMNS)).map_batches(
        _pick, fn_kwargs={"chosen": chosen, "bounds": bounds, "seed": seed}, batch_format="pyarrow"
    )
    table = (_collect(rows) or empty).sort_by("id")
    # One row per id (a corpus without exact dedup may hold the same id twice).
    ids = table.column("id").to_pylist()
    first = [i == 0 or ids[i] != ids[i - 1] for i in range(len(ids))]
    table = table.filter(pa.array(first, pa.bool_()))
    per: dict[str, int] = {}
    for rid in table.column("id").to_pylist():
        per[chosen[rid]] = per.get(chosen[rid], 0) + 1
    return table, dict(sorted(per.items()))


def write_sample(out_dir: str, table: pa.Table, rows_per_file: int) -> None:
    """``sample/part-*.parquet``: the sampled rows with their content (classify reads these)."""
    fs, base = resolve_fs(out_dir)
    fs.create_dir(base, recursive=True)
    for i in range(0, max(table.num_rows, 1), rows_per_file):
        part = table.slice(i, rows_per_file)
        pq.write_table(part, f"{base}/part-{i // rows_per_file:05d}.parquet", filesystem=fs)
