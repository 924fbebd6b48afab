"""MinHash near-duplicate removal across a generated set.

Signatures are computed where the text is (in Ray Data workers, next to validation); the
driver only sees ``num_perm`` integers per row and runs LSH banding over them, keeping the
first row (lowest sample index) of every group of near-duplicates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
from datasketch import MinHash, MinHashLSH

_TOKEN = re.compile(r"\w+|[^\w\s]")
# Stated, not defaulted: signatures made in workers are rebuilt on the driver, and
# datasketch only compares sketches of one permutation scheme.
SCHEME = "affine32"


def shingles(text: str, n: int = 5) -> set[bytes]:
    """Token n-grams (words and punctuation), so reformatting does not hide a duplicate."""
    toks = _TOKEN.findall(text.lower())
    if len(toks) < n:
        return {" ".join(toks).encode()} if toks else set()
    return {" ".join(toks[i : i + n]).encode() for i in range(len(toks) - n + 1)}


def signature(text: str, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> np.ndarray:
    """The MinHash signature of ``text``: ``num_perm`` uint64 values."""
    m = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME)
    sh = shingles(text, ngram)
    if sh:
        m.update_batch(list(sh))
    return m.hashvalues.astype(np.uint64)


def near_duplicates(
    sigs: Iterable[tuple[str, np.ndarray]], threshold: float, num_perm: int = 128, seed: int = 1
) -> dict[str, str]:
    """``{dropped key: the kept key it duplicates}`` for keys given in priority order.

    LSH proposes candidates; a candidate counts only if the signatures' estimated Jaccard
    similarity really reaches ``threshold`` (LSH alone has false positives).
    """
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept: dict[str, MinHash] = {}
    dups: dict[str, str] = {}
    for key, sig in sigs:
        m = MinHash(num_perm=num_perm, seed=seed, hashvalues=sig, scheme=SCHEME)
        match = next(
            (k for k in lsh.query(m) if kept[k].jaccard(m) >= threshold),
            None,
        )
        if match is not None:
            dups[key] = match
            continue
        lsh.insert(key, m)
        kept[key] = m
    return dups


def near_dup_rate(
    sigs: list[tuple[str, np.ndarray]], threshold: float, num_perm: int = 128, seed: int = 1
) -> float:
    """Fraction of rows that near-duplicate an earlier row (0 for an empty set)."""
    if not sigs:
        return 0.0
    return len(near_duplicates(sigs, threshold, num_perm, seed)) / len(sigs)
