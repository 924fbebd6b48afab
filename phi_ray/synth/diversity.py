"""The diversity report the paper lacked: n-gram diversity, near-duplicates, coverage.

- ``distinct_n``: distinct token n-grams / all token n-grams over the set (n = 1..4).
- ``near_dup_rate``: rows whose exact shingle Jaccard with another row reaches the dedup
  threshold, measured independently of the MinHash pass that removed duplicates (fresh
  candidates from a looser LSH, then exact Jaccard), so it checks that pass.
- topic-tree coverage: share of topics / subtopics / audiences with at least one row, and
  the normalised entropy of the topic distribution (1.0 = perfectly even).
Sets larger than ``max_rows`` are measured on a fixed random sample (reported).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from typing import Any

from datasketch import MinHash, MinHashLSH

from phi_ray.synth.dedup import shingles
from phi_ray.synth.topics import TopicTree

_TOKEN = re.compile(r"\w+|[^\w\s]")


def distinct_ngrams(texts: list[str], ns: tuple[int, ...] = (1, 2, 3, 4)) -> dict[str, float]:
    """``{"distinct_1": ratio, ...}`` over all texts together."""
    out = {}
    toks = [_TOKEN.findall(t.lower()) for t in texts]
    for n in ns:
        total, seen = 0, set()
        for tk in toks:
            grams = [tuple(tk[i : i + n]) for i in range(len(tk) - n + 1)]
            total += len(grams)
            seen.update(grams)
        out[f"distinct_{n}"] = round(len(seen) / total, 4) if total else 0.0
    return out


def exact_near_dup_rate(texts: list[str], threshold: float, ngram: int = 5) -> float:
    """Fraction of texts with an earlier text at exact shingle Jaccard >= ``threshold``."""
    if len(texts) < 2:
        return 0.0
    sets = [shingles(t, ngram) for t in texts]
    loose = max(0.05, threshold - 0.2)  # generous candidates; exact Jaccard decides
    lsh = MinHashLSH(threshold=loose, num_perm=128)
    dups = 0
    for i, s in enumerate(sets):
        m = MinHash(num_perm=128, seed=7)
        if s:
            m.update_batch(list(s))
        for j in lsh.query(m):
            other = sets[j]
            if s and other and len(s & other) / len(s | other) >= threshold:
                dups += 1
                break
        lsh.insert(i, m)
    return round(dups / len(texts), 4)


def _entropy(counts: Counter, k: int) -> float:
    total = sum(counts.values())
    if total == 0 or k <= 1:
        return 0.0
    h = -sum(c / total * math.log(c / total) for c in counts.values() if c)
    return round(h / math.log(k), 4)


def coverage(rows: list[dict[str, Any]], tree: TopicTree) -> dict[str, Any]:
    """Coverage of the tree's topics, subtopics and audiences by ``rows``."""
    topics = Counter(f"{r['category']}/{r['topic']}" for r in rows)
    subs = {f"{r['category']}/{r['topic']}/{r['subtopic']}" for r in rows}
    auds = {r["audience"] for r in rows}
    return {
        "topics_total": len(tree.topic_keys()),
        "topic_coverage": round(len(set(topics) & tree.topic_keys()) / len(tree.topic_keys()), 4),
        "subtopic_coverage": round(
            len(subs & tree.subtopic_keys()) / max(1, len(tree.subtopic_keys())), 4
        ),
        "audience_coverage": round(len(auds & set(tree.audiences)) / len(tree.audiences), 4),
        "topic_entropy": _entropy(topics, len(tree.topic_keys())),
        "top_topics": topics.most_common(5),
    }


def report(
    texts: list[str],
    threshold: float,
    rows: list[dict[str, Any]] | None = None,
    tree: TopicTree | None = None,
    max_rows: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """The diversity figures of one generated set (``rows`` carry topic provenance)."""
    idx = list(range(len(texts)))
    if len(idx) > max_rows:
        idx = sorted(random.Random(seed).sample(idx, max_rows))
    sample = [texts[i] for i in idx]
    out: dict[str, Any] = {
        "rows": len(texts),
        "measured_rows": len(sample),
        **distinct_ngrams(sample),
        "near_dup_rate": exact_near_dup_rate(sample, threshold),
        "near_dup_threshold": threshold,
    }
    if rows is not None and tree is not None:
        out.update(coverage(rows, tree))
    return out
