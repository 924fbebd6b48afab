"""Ingest dedup at scale: duplicate LSH edges are removed in Ray (the driver receives each
distinct edge once), and exact dedup shuffles narrow columns only, naming rows by the
Parquet reader's row key so fully identical rows still keep exactly one copy."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_ray.corpus import dedup


def _reference_edges(uids: np.ndarray, bands: np.ndarray) -> tuple[int, set]:
    """(raw star edges over all buckets, the distinct set): the single-process answer."""
    buckets: dict[int, list[int]] = defaultdict(list)
    for u, row in zip(uids.tolist(), bands.tolist(), strict=True):
        for k in row:
            buckets[k].append(u)
    raw, distinct = 0, set()
    for members in buckets.values():
        head = min(members)
        for m in members:
            if m != head:
                raw += 1
                distinct.add((head, m))
    return raw, distinct


def test_driver_receives_each_distinct_edge_once(ray_session):
    import ray

    rng = np.random.default_rng(0)
    n, b = 3000, 8
    uids = rng.permutation(np.arange(1, n + 1, dtype=np.uint64) * np.uint64(7919))
    # Clusters of five that share every band (each pair repeats in all 8 bands, so across
    # blocks), plus a small per-band key pool so buckets also overlap between clusters.
    cluster = np.arange(n) // 5
    bands = np.where(
        rng.random((n, b)) < 0.9,
        (cluster[:, None] * b + np.arange(b)) + 1_000_000,
        rng.integers(0, 400, (n, b)),
    ).astype(np.uint64)
    raw, want = _reference_edges(uids, bands)
    assert raw > 3 * len(want)  # the hostile part: bands repeat most pairs many times

    ds = ray.data.from_arrow(
        pa.table({"uid": uids, "bands": pa.array(list(bands), type=pa.list_(pa.uint64()))})
    ).repartition(6)
    src, dst = dedup.collect_edges(dedup.near_duplicate_edges(ds, 4))
    got = list(zip(src.tolist(), dst.tolist(), strict=True))
    assert len(got) == len(set(got)) == len(want)  # each distinct edge exactly once
    assert set(got) == want
    ref_src = np.array([s for s, _ in want], dtype=np.uint64)
    ref_dst = np.array([d for _, d in want], dtype=np.uint64)
    assert np.array_equal(
        dedup.duplicates_to_remove(src, dst), dedup.duplicates_to_remove(ref_src, ref_dst)
    )


def test_distinct_edges_block_and_losers_complement_keep_first():
    e = pa.table(
        {
            "src": np.array([5, 1, 5, 1, 1], dtype=np.uint64),
            "dst": np.array([6, 2, 6, 3, 2], dtype=np.uint64),
        }
    )
    out = dedup.distinct_edges_block(e)
    assert list(zip(out["src"].to_pylist(), out["dst"].to_pylist(), strict=True)) == [
        (1, 2),
        (1, 3),
        (5, 6),
    ]
    t = pa.table(
        {
            "id": ["b", "a", "b", "a", "a"],
            "path": ["z", "y", "x", "w", "w"],  # the last two rows are identical but for key
            "repo": ["r"] * 5,
            "row_hash": np.array([10, 11, 12, 13, 14], dtype=np.uint64),
        }
    )
    losers = set(dedup.losers_per_id(t)["row_hash"].to_pylist())
    kept = set(dedup.keep_first_per_id(t)["row_hash"].to_pylist())
    assert len(losers) == 3 and kept == {10, 11, 12, 13, 14} - losers
    assert dedup.losers_per_id(t.slice(0, 0)).num_rows == 0


@pytest.fixture
def docs_passes(tmp_path):
    """A ``docs`` pass on disk (two files) with exact copies inside and across files,
    fully identical rows, and a dropped row sharing a kept row's id."""
    from phi_ray.corpus.process import DOC_SCHEMA
    from phi_ray.corpus.stage import Passes
    from phi_ray.runs import RunDir

    passes = Passes(RunDir(str(tmp_path), "r"), "h")
    rows = [  # (id, path, repo, drop)
        ("A", "p2", "r", ""),
        ("A", "p1", "r", ""),  # A's winner (smallest path)
        ("B", "q", "r", ""),
        ("B", "q", "r", ""),  # identical to the one above: exactly one must remain
        ("C", "c", "r", "too_short"),
        ("A", "p1", "r", ""),  # identical to A's winner, in the other file
        ("B", "q", "r", ""),
        ("D", "d", "r", ""),
        ("C", "c2", "r", ""),
    ]
    root = tmp_path / "docs"
    for name, part in (("0", rows[:5]), ("1", rows[5:])):
        cols = {f.name: [None] * len(part) for f in DOC_SCHEMA}
        cols["id"] = [r[0] for r in part]
        cols["content"] = [f"content {r[0]}" for r in part]
        cols["path"], cols["repo"] = [r[1] for r in part], [r[2] for r in part]
        cols["drop"], cols["source"] = [r[3] for r in part], ["s"] * len(part)
        cols["uid"] = [ord(r[0]) for r in part]
        cols["bands"] = [[] for _ in part]
        for c in ("n_chars", "n_tokens", "n_bytes"):
            cols[c] = [1] * len(part)
        root.mkdir(exist_ok=True)
        pq.write_table(pa.table(cols, schema=DOC_SCHEMA), root / f"{name}.parquet")
    passes.path = lambda n: str(tmp_path / n)  # the fixture's layout
    passes.save_array = lambda n, a: np.save(tmp_path / n, a)
    return passes, tmp_path


def test_exact_dedup_from_narrow_keys_keeps_one_row_per_id(ray_session, docs_passes):
    from phi_ray.corpus.process import CORPUS_COLUMNS
    from phi_ray.corpus.stage import _exact, _kept_docs

    passes, tmp = docs_passes
    meta = _exact(_kept_docs(passes, ["id", "path", "repo", "row_hash"]), 3, passes)
    losers = np.load(tmp / "exact_keys.npy")
    assert meta == {"losers": 4} and len(losers) == 4 and np.all(np.diff(losers) > 0)
    # Row keys must name the same rows in a wide read as in the narrow one.
    wide = _kept_docs(passes, [*CORPUS_COLUMNS, "uid", "row_hash"]).to_pandas()
    assert len(wide) == 8 and wide["row_hash"].is_unique
    out = dedup.drop_uids(
        pa.Table.from_pandas(wide, preserve_index=False),
        np.zeros(0, np.uint64),
        CORPUS_COLUMNS,
        losers,
    )
    assert sorted(zip(out["id"].to_pylist(), out["path"].to_pylist(), strict=True)) == [
        ("A", "p1"),
        ("B", "q"),
        ("C", "c2"),
        ("D", "d"),
    ]
    # The near pass's input: the same rows, losers already gone.
    near_in = _kept_docs(passes, ["uid", "bands", "row_hash"], ray_session.put(losers))
    near_in = near_in.to_pandas()
    assert sorted(near_in["uid"].tolist()) == [ord(c) for c in "ABCD"]


def test_dedup_sets_are_made_off_the_driver(ray_session):
    """The sets that grow with the corpus (edges, removed uids, exact losers) are built in
    a Ray task and stay in the object store: the driver gets a reference and a count."""
    import os

    def array_and_pid(n: int) -> tuple[np.ndarray, int]:  # nested: pickled by value
        import os

        return np.arange(n, dtype=np.uint64), os.getpid()

    ref, pid = dedup.off_driver(array_and_pid, 1000)
    assert isinstance(ref, ray_session.ObjectRef) and pid != os.getpid()
    assert np.array_equal(ray_session.get(ref), np.arange(1000, dtype=np.uint64))
