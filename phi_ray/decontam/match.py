"""The per-row work of decontamination, as one streaming Ray Data pass.

``read_parquet -> add_text -> EmbedNeighbors (actors) -> match_and_write``: every row is
matched against the benchmarks by the three methods, and, since whether a row is removed
at τ depends on that row alone (see :mod:`phi_ray.decontam.sweep`), the same task writes
the row to the pruned set of every τ it survives. What comes out of the pass is the
*match table*: one row per input row with the tasks it matched by each method, its AST
match rates and the time each method took; the report is built from it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from phi_ray.decontam.astmatch import match_rate, units
from phi_ray.decontam.benchmarks import Problem
from phi_ray.decontam.ngram import NgramIndex

MATCH_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("exact", pa.list_(pa.string())),  # task ids contained verbatim
        ("ngram", pa.list_(pa.string())),  # task ids sharing an n-gram
        ("ast_tasks", pa.list_(pa.string())),  # candidates with match rate >= min tau
        ("ast_rates", pa.list_(pa.float64())),
        ("ast_l2", pa.list_(pa.float64())),  # their embedding distance (NaN: all-pairs mode)
        ("score", pa.float64()),  # removed at tau iff score >= tau (2.0: exact / n-gram)
        ("unparsed", pa.bool_()),  # had AST candidates but its code did not parse
        ("n_pairs", pa.int64()),  # AST pairs compared
        ("t_ngram", pa.float64()),  # seconds spent per method on this row
        ("t_embed", pa.float64()),
        ("t_ast", pa.float64()),
    ]
)
HARD_SCORE = 2.0  # above every tau: exact and n-gram matches are removed at every tau


@dataclass
class Matcher:
    """The benchmark side of methods 1 and 3, shipped once to every Ray Data task."""

    task_ids: list[str]
    bench_units: list[list[str]]  # normalised AST units per task
    ngrams: NgramIndex
    min_tau: float
    all_pairs: bool  # compare every row with every task (no embedding step)

    @classmethod
    def build(cls, problems: list[Problem], dcfg) -> Matcher:
        return cls(
            task_ids=[p.task_id for p in problems],
            bench_units=[units(p.code, p.entry_point) for p in problems],
            ngrams=NgramIndex.build(problems, dcfg.ngram, dcfg.min_exact_tokens, dcfg.allow_list),
            min_tau=min(dcfg.taus),
            all_pairs=dcfg.candidates == "all",
        )

    def candidates(self, knn: tuple | None, i: int) -> list[tuple[int, float]]:
        """(task index, L2) pairs the AST step compares for row ``i``.

        ``knn`` is (indices, distances, thresholds) per row from :class:`EmbedNeighbors`;
        None in all-pairs mode.
        """
        if self.all_pairs or knn is None:
            return [(j, float("nan")) for j in range(len(self.task_ids))]
        idx, dist, thr = knn[0][i], knn[1][i], knn[2][i]
        return [(int(j), float(d)) for j, d in zip(idx, dist, strict=True) if d <= thr]

    def row(self, text: str, cands: list[tuple[int, float]]) -> dict:
        """Match one row: methods 1 and 3 (method 2 already chose ``cands``)."""
        t0 = time.perf_counter()
        exact, ngram = self.ngrams.match(text)
        t1 = time.perf_counter()
        mine = units(text) if cands else []
        tasks, rates, l2s = [], [], []
        for j, d in cands if mine else ():
            r = match_rate(mine, self.bench_units[j], cutoff=self.min_tau)
            if r >= self.min_tau:
                tasks.append(self.task_ids[j])
                rates.append(r)
                l2s.append(d)
        t2 = time.perf_counter()
        score = HARD_SCORE if exact or ngram else max(rates, default=0.0)
        return {
            "exact": exact,
            "ngram": ngram,
            "ast_tasks": tasks,
            "ast_rates": rates,
            "ast_l2": l2s,
            "score": score,
            "unparsed": bool(cands) and not mine,
            "n_pairs": len(cands) if mine else 0,
            "t_ngram": t1 - t0,
            "t_ast": t2 - t1,
        }


TEXT, KNN_IDX, KNN_L2, L2_THR, T_EMBED = "_text", "_knn_idx", "_knn_l2", "_l2_threshold", "_t_embed"
_WORK_COLUMNS = [TEXT, KNN_IDX, KNN_L2, L2_THR, T_EMBED]


def add_text(batch: pa.Table, columns: list[str]) -> pa.Table:
    """Append ``_text``: the row's text columns joined, in order (prompt + completion)."""
    parts = [pc.fill_null(batch[c].cast(pa.string()), "") for c in columns]
    text = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "")
    return batch.append_column(TEXT, text)


@dataclass
class PrunedSink:
    """Where ``match_and_write`` puts the surviving rows: one directory per τ."""

    fs: pafs.FileSystem
    dirs: dict[float, list[str]]  # tau -> directories (pruned/tau=<t>, plus the use_tau copy)

    def write(self, batch: pa.Table, scores: np.ndarray) -> None:
        """Write the batch's rows with ``score < tau`` under each τ's directories.

        File names are a digest of the batch's ids, so a retried task overwrites its own
        files instead of duplicating rows.
        """
        ids = batch["id"].cast(pa.string()).to_pylist()
        name = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:20]
        for tau, dirs in self.dirs.items():
            kept = batch.filter(pa.array(scores < tau))
            if kept.num_rows == 0:
                continue
            for d in dirs:
                self.fs.create_dir(d, recursive=True)
                with self.fs.open_output_stream(f"{d}/part-{name}.parquet") as f:
                    pq.write_table(kept, f)


def match_and_write(batch: pa.Table, matcher: Matcher, sink: PrunedSink) -> pa.Table:
    """Ray Data UDF: match a batch, write its pruned copies, return its match-table rows."""
    n = batch.num_rows
    texts = batch[TEXT].to_pylist()
    knn = None
    if KNN_IDX in batch.column_names:
        knn = (batch[KNN_IDX].to_pylist(), batch[KNN_L2].to_pylist(), batch[L2_THR].to_pylist())
    rows = [matcher.row(texts[i], matcher.candidates(knn, i)) for i in range(n)]
    cols = {k: [r[k] for r in rows] for k in MATCH_SCHEMA.names if k not in ("id", "t_embed")}
    cols["id"] = batch["id"].cast(pa.string()).to_pylist()
    cols["t_embed"] = batch[T_EMBED].to_pylist() if T_EMBED in batch.column_names else [0.0] * n
    original = batch.drop_columns([c for c in _WORK_COLUMNS if c in batch.column_names])
    sink.write(original, np.array(cols["score"], dtype=np.float64))
    return pa.table(
        {k: pa.array(cols[k], type=MATCH_SCHEMA.field(k).type) for k in MATCH_SCHEMA.names}
    )
