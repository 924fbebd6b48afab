"""Raw rows -> documents: checks, drop reasons, ids, token counts and LSH band keys.

This is the heavy per-file work of the stage and runs as one fused Ray Data ``map_batches``
right behind the readers. Every input row comes out (dropped rows keep their metadata and
reason but lose their content), so the drop counts can be computed afterwards from the
written rows alone.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import numpy as np
import pyarrow as pa

from phi_ray.config import DedupConfig, FilterConfig
from phi_ray.corpus.filters import READ_REASONS, quality_reason, text_reason
from phi_ray.corpus.minhash import band_keys, signature

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("content", pa.string()),
        ("path", pa.string()),
        ("repo", pa.string()),
        ("license", pa.string()),
        ("source", pa.string()),
        ("n_chars", pa.int64()),
        ("n_tokens", pa.int64()),
        ("n_bytes", pa.int64()),
        ("drop", pa.string()),
        ("uid", pa.uint64()),  # 64-bit prefix of id: the LSH graph's node id
        ("bands", pa.list_(pa.uint64())),  # (bands,) bucket keys; empty for dropped rows
    ]
)
CORPUS_COLUMNS = ["id", "content", "path", "repo", "license", "source", "n_chars", "n_tokens"]


def tokenizer_spec() -> str:
    """The codegen tokenizer as its ``tokenizer.json`` text, built once on the driver.

    Workers rebuild it with the ``tokenizers`` library alone: importing ``transformers``
    in every Ray worker costs seconds and ~300 MB each, for a count of token ids.
    """
    from phi_ray.model.tokenizer import get_tokenizer

    return get_tokenizer().backend_tokenizer.to_str()


@functools.lru_cache(maxsize=2)
def _tokenizer(spec: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_str(spec)


def count_tokens(texts: list[str], spec: Any) -> list[int]:
    """codegen-350M-mono token counts, one batched call (Rust, no special tokens).

    ``spec`` is :func:`tokenizer_spec`'s text or a Ray object ref to it.
    """
    if not texts:
        return []
    if not isinstance(spec, str):
        import ray

        spec = ray.get(spec)
    # One Ray worker per CPU already; Rust threads on top would oversubscribe the node.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The fast variant skips character offsets, which a count never reads (~20% of the
    # tokenizer's time on source files, the largest per-file cost of ingest).
    enc = _tokenizer(spec).encode_batch_fast(texts, add_special_tokens=False)
    return [len(e.ids) for e in enc]


def process_batch(
    batch: pa.Table,
    filters: FilterConfig,
    dedup: DedupConfig,
    bands: int,
    rows: int,
    is_code: bool,
    tokenizer: Any,
) -> pa.Table:
    """Apply every check to a batch of raw rows and compute what dedup needs.

    Tokens are counted for every row that has text (``tokens_in`` covers dropped files
    too); signatures only for kept rows.
    """
    content = batch.column("content").to_pylist()
    drop = batch.column("drop").to_pylist()
    n = len(content)
    for i, text in enumerate(content):
        if not drop[i]:
            drop[i] = text_reason(text, filters.max_bytes) or ""
        if not drop[i]:
            drop[i] = quality_reason(text, filters, is_code) or ""
    usable = [i for i in range(n) if content[i] is not None and drop[i] not in _UNTOKENIZED]
    tokens = [0] * n
    for i, t in zip(usable, count_tokens([content[i] for i in usable], tokenizer), strict=True):
        tokens[i] = t
    ids, uids, n_bytes = [""] * n, np.zeros(n, dtype=np.uint64), [0] * n
    for i, text in enumerate(content):
        if text is not None:
            raw = text.encode("utf-8", "surrogatepass")  # dropped rows may hold surrogates
            digest = hashlib.sha256(raw).digest()
            ids[i], uids[i], n_bytes[i] = digest.hex(), int.from_bytes(digest[:8], "big"), len(raw)
    kept = [i for i in range(n) if not drop[i]]
    keys = [[] for _ in range(n)]
    if dedup.near and kept:
        sigs = np.stack([signature(content[i], dedup.num_perm, dedup.ngram) for i in kept])
        for i, k in zip(kept, band_keys(sigs, bands, rows).tolist(), strict=True):
            keys[i] = k
    return pa.table(
        {
            "id": ids,
            "content": [c if not d else None for c, d in zip(content, drop, strict=True)],
            "path": batch.column("path"),
            "repo": batch.column("repo"),
            "license": batch.column("license"),
            "source": batch.column("source"),
            "n_chars": [len(c) if c is not None else 0 for c in content],
            "n_tokens": tokens,
            "n_bytes": n_bytes,
            "drop": drop,
            "uid": uids,
            "bands": keys,
        },
        schema=DOC_SCHEMA,
    )


# Texts these reasons reject are not worth tokenizing (no text, or NUL-riddled / huge).
_UNTOKENIZED = {*READ_REASONS, "empty"}
