"""A stratified, deterministic sample of the corpus for annotation.

Strata are (source, size bucket by ``n_chars``), so that rare sources and very short or
very long files are represented, as the classifier will later score all of them. Each
stratum gets a share proportional to its size (largest remainder), and at least one row
when the sample is big enough. Inside a stratum, rows are ranked by sha256(seed, id): the
sample is the same on every rerun, and a larger ``sample_size`` extends the smaller
sample instead of redrawing it (so every answer already paid for is reused).
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from phi_ray.runs import resolve_fs

CORPUS_COLUMNS = ("id", "content", "path", "source", "n_chars")


def open_corpus(path: str) -> pads.Dataset:
    """The ingest stage's ``corpus/`` Parquet files (local path or URI)."""
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


def _allocate(sizes: dict[tuple[str, str], int], total: int) -> dict[tuple[str, str], int]:
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


def stratified_sample(
    ds: pads.Dataset, size: int, bounds: list[int], seed: int
) -> tuple[pa.Table, dict[str, int]]:
    """(rows of the sample with CORPUS_COLUMNS, rows per stratum "source|bucket")."""
    meta = ds.to_table(columns=["id", "source", "n_chars"])
    ids = meta.column("id").to_pylist()
    sources = meta.column("source").to_pylist()
    sizes_chars = meta.column("n_chars").to_pylist()
    strata: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for rid, src, n in zip(ids, sources, sizes_chars, strict=True):
        rank = hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()
        strata[(str(src), size_bucket(int(n or 0), bounds))].append((rank, rid))
    alloc = _allocate({k: len(v) for k, v in strata.items()}, size)
    chosen: list[str] = []
    for k in sorted(strata):
        chosen += [rid for _, rid in sorted(strata[k])[: alloc[k]]]
    table = ds.to_table(columns=list(CORPUS_COLUMNS), filter=pc.field("id").isin(chosen))
    # One row per id, in a stable order (the corpus is deduplicated, but be safe).
    table = table.sort_by("id")
    seen: set[str] = set()
    first = [not (rid in seen or seen.add(rid)) for rid in table.column("id").to_pylist()]
    table = table.filter(pa.array(first, pa.bool_()))
    counts = {f"{s}|{b}": n for (s, b), n in sorted(alloc.items()) if n}
    return table, counts
