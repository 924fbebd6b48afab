"""pass@k by the unbiased estimator of Chen et al. (2021), and per-split summaries.

For a problem with ``n`` samples of which ``c`` pass, pass@k = 1 - C(n-c, k) / C(n, k):
the chance that at least one of k samples drawn without replacement passes. The product
form below is the numerically stable one the Codex paper gives (no huge binomials).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``n`` samples, ``c`` of them correct."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1 (n={n}, c={c}, k={k})")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def counts_by_task(results: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{task_id: (n, c)}`` from result rows with ``task_id`` and ``passed``."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in results:
        acc[r["task_id"]][0] += 1
        acc[r["task_id"]][1] += bool(r["passed"])
    return {t: (n, c) for t, (n, c) in acc.items()}


def summarize_pass_at_k(
    counts: Mapping[str, tuple[int, int]], ks: Iterable[int]
) -> dict[str, float]:
    """Mean pass@k over problems, for each k that every problem has enough samples for."""
    out: dict[str, float] = {}
    if not counts:
        return out
    for k in ks:
        if all(n >= k for n, _ in counts.values()):
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()]))
    return out


def split_pass_at_k(
    counts: Mapping[str, tuple[int, int]], split: Mapping[str, list[str]], ks: Iterable[int]
) -> dict[str, dict[str, Any]]:
    """pass@k per named subset of task ids (e.g. decontam's similar / non_similar)."""
    ks = list(ks)
    out = {}
    for name, ids in split.items():
        sub = {t: counts[t] for t in ids if t in counts}
        out[name] = {"problems": len(sub), **summarize_pass_at_k(sub, ks)}
    return out
