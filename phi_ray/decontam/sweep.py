"""The τ sweep over match tables: what is removed at each τ, why, and the report.

A row is removed at τ when it matched a benchmark task exactly or by n-gram (at every τ),
or when an embedding candidate's AST match rate is ``>= τ``. Raising τ can therefore only
keep more rows: removed counts are non-increasing in τ by construction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from phi_ray.decontam.benchmarks import Problem

# A row's drop reason is its strongest method: exact, then ngram, then the AST method
# ("embed_ast" on embedding candidates, "ast" when every pair is compared).


def tau_name(tau: float) -> str:
    """Folder name of a τ's pruned set: ``tau=0.9``."""
    return f"tau={tau:g}"


def _reason(row: dict[str, Any], method: str) -> str:
    return "exact" if row["exact"] else "ngram" if row["ngram"] else method


def matched_rows(table: pa.Table, min_tau: float) -> list[dict[str, Any]]:
    """The rows removed at the lowest τ (so at some τ), as dicts."""
    return table.filter(pc.greater_equal(table["score"], min_tau)).to_pylist()


def dataset_summary(
    table: pa.Table, rows: list[dict[str, Any]], taus: list[float], method: str
) -> dict[str, Any]:
    """Counts per τ and drop reason, plus method timings, for one dataset."""
    n = table.num_rows
    per_tau = {}
    for tau in sorted(taus):
        reasons = Counter(_reason(r, method) for r in rows if r["score"] >= tau)
        removed = sum(reasons.values())
        per_tau[tau_name(tau)] = {
            "removed": removed,
            "kept": n - removed,
            "by_reason": {k: reasons.get(k, 0) for k in ("exact", "ngram", method)},
        }

    def total(col: str) -> float:
        return float(pc.sum(table[col]).as_py() or 0) if n else 0.0

    return {
        "rows": n,
        "unparsed_rows": int(total("unparsed")),
        "ast_pairs": int(total("n_pairs")),
        "method_seconds": {m: round(total(f"t_{m}"), 3) for m in ("ngram", "embed", "ast")},
        "taus": per_tau,
    }


def row_report(
    row: dict[str, Any], dataset: str, taus: list[float], bench_of: dict[str, str], method: str
) -> dict[str, Any]:
    """One removed row: the τs it is removed at and every benchmark task it matched, how."""
    matches = [{"benchmark": bench_of[t], "task_id": t, "method": "exact"} for t in row["exact"]]
    matches += [
        {"benchmark": bench_of[t], "task_id": t, "method": "ngram"}
        for t in row["ngram"]
        if t not in row["exact"]
    ]
    for t, rate, l2 in zip(row["ast_tasks"], row["ast_rates"], row["ast_l2"], strict=True):
        m = {"benchmark": bench_of[t], "task_id": t, "method": method}
        m["match_rate"] = round(rate, 4)
        if l2 == l2:  # NaN in all-pairs mode: no embedding distance
            m["l2"] = round(l2, 4)
        m["taus"] = [t_ for t_ in sorted(taus) if rate >= t_]
        matches.append(m)
    return {
        "dataset": dataset,
        "id": row["id"],
        "reason": _reason(row, method),
        "removed_at": [t for t in sorted(taus) if row["score"] >= t],
        "matches": matches,
    }


def humaneval_split(
    reports: list[dict[str, Any]], problems: list[Problem], tau: float
) -> dict[str, Any]:
    """HumanEval problems that some row removed at ``tau`` matched (similar) and the rest."""
    similar: dict[str, int] = defaultdict(int)
    for r in reports:
        if tau not in r["removed_at"]:
            continue
        for m in r["matches"]:
            if m["benchmark"] == "humaneval" and ("taus" not in m or tau in m["taus"]):
                similar[m["task_id"]] += 1
    he = [p.task_id for p in problems if p.benchmark == "humaneval"]
    return {
        "tau": tau,
        "available": bool(he),
        "similar": [t for t in he if t in similar],
        "non_similar": [t for t in he if t not in similar],
        "similar_rows": {t: similar[t] for t in he if t in similar},  # how many rows each
    }
