"""Method 2: embedding L2 distance, as nearest benchmark problems for every row.

Rows and benchmark references are embedded with the quality stage's embedder
(:class:`phi_ray.quality.embed.Embedder`, CodeGen-Mono-350M in the paper). Each row gets
its ``k`` nearest benchmark problems by L2 distance, from faiss (``IndexFlatL2``) when it
is installed, else from numpy in blocks, never holding the whole distance matrix. Work is
therefore n·m distance products but only n·k candidate pairs, and it is those that the AST
step (method 3) compares, so the expensive step grows as n·k.

A k-NN pair is an *embedding candidate* when its distance is at most a threshold:
``decontam.l2_max`` when set, else the ``l2_quantile`` quantile of the distances between
distinct benchmark problems. The latter calibrates any embedder without knowing its
scale: a row counts as near a problem when it is closer to it than that fraction of pairs
of genuinely different problems are to each other.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

_BLOCK_ELEMS = 1 << 22  # distance block: at most 4M floats (16 MB) at a time


def _faiss():
    try:
        import faiss  # type: ignore[import-not-found]
    except ImportError:
        return None
    return faiss


def knn(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(idx, dist)``, both ``(n, min(k, m))``, nearest first: L2 from queries to base."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(base, dtype=np.float32)
    k = min(k, len(b))
    if len(q) == 0 or k == 0:
        return np.zeros((len(q), k), np.int64), np.zeros((len(q), k), np.float32)
    faiss = _faiss()
    if faiss is not None:
        index = faiss.IndexFlatL2(b.shape[1])
        index.add(b)
        d2, idx = index.search(q, k)
        return idx.astype(np.int64), np.sqrt(np.maximum(d2, 0)).astype(np.float32)
    return _knn_numpy(q, b, k)


def _knn_numpy(q: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocked exact k-NN: ||q||² - 2 q·b + ||b||², keeping a running top-k per row."""
    n, m = len(q), len(b)
    qn = (q * q).sum(1)[:, None]  # (n, 1)
    bn = (b * b).sum(1)[None, :]  # (1, m)
    best_d = np.full((n, k), np.inf, np.float32)
    best_i = np.zeros((n, k), np.int64)
    rows = max(1, _BLOCK_ELEMS // max(m, 1))
    cols = max(k, _BLOCK_ELEMS // max(min(n, rows), 1))
    for r0 in range(0, n, rows):
        qs = slice(r0, r0 + rows)
        for c0 in range(0, m, cols):
            d2 = qn[qs] - 2.0 * (q[qs] @ b[c0 : c0 + cols].T) + bn[:, c0 : c0 + cols]  # (r, c)
            cand_d = np.concatenate([best_d[qs], d2.astype(np.float32)], axis=1)
            cand_i = np.concatenate(
                [best_i[qs], np.broadcast_to(np.arange(c0, c0 + d2.shape[1]), d2.shape)], axis=1
            )
            top = np.argpartition(cand_d, k - 1, axis=1)[:, :k]
            best_d[qs] = np.take_along_axis(cand_d, top, 1)
            best_i[qs] = np.take_along_axis(cand_i, top, 1)
    order = np.argsort(best_d, axis=1, kind="stable")
    dist = np.sqrt(np.maximum(np.take_along_axis(best_d, order, 1), 0))
    return np.take_along_axis(best_i, order, 1), dist.astype(np.float32)


def l2_threshold(bench: np.ndarray, quantile: float, l2_max: float | None = None) -> float:
    """The candidate threshold: ``l2_max``, or a quantile of inter-problem distances."""
    if l2_max is not None:
        return float(l2_max)
    if quantile >= 1.0 or len(bench) < 2:
        return float("inf")
    m, sq = len(bench), (bench * bench).sum(1)
    d = []
    for r0 in range(0, m, 512):  # (r, m) row blocks of the m x m matrix; upper triangle only
        blk = bench[r0 : r0 + 512]
        d2 = sq[r0 : r0 + len(blk), None] - 2 * blk @ bench.T + sq[None, :]
        upper = np.arange(m)[None, :] > np.arange(r0, r0 + len(blk))[:, None]
        d.append(np.sqrt(np.maximum(d2[upper], 0)))
    return float(np.quantile(np.concatenate(d), quantile))


class EmbedNeighbors:
    """Ray Data actor: embeds a batch of rows and finds each row's k nearest problems.

    The benchmark references are embedded once per actor, by the same model on the same
    device as the rows, so both sides' vectors are always comparable.
    """

    def __init__(
        self,
        embedder_cfg: Any,
        seed: int,
        bench_texts: list[str],
        k: int,
        l2_quantile: float,
        l2_max: float | None,
        embed_text: str = "code",
        use_gpu: bool = False,
    ) -> None:
        from phi_ray.quality.embed import Embedder
        from phi_ray.runtime import cuda_available

        device = "cuda" if use_gpu and cuda_available() else "cpu"
        self.embedder = Embedder(embedder_cfg, device=device, seed=seed)
        self.normalize = embed_text == "normalized"
        self.bench = self.embedder.embed(self._texts(bench_texts))
        self.k = k
        self.threshold = l2_threshold(self.bench, l2_quantile, l2_max)

    def _texts(self, texts) -> list[str]:
        if not self.normalize:
            return [str(t) for t in texts]
        from phi_ray.decontam.astmatch import normalized_source

        return [normalized_source(str(t)) for t in texts]

    def __call__(self, batch):
        """pyarrow batch with ``_text`` -> the same batch plus k-NN columns."""
        import pyarrow as pa

        from phi_ray.decontam.match import KNN_IDX, KNN_L2, L2_THR, T_EMBED, TEXT

        t0 = time.perf_counter()
        vecs = self.embedder.embed(self._texts(batch[TEXT].to_pylist()))
        idx, dist = knn(vecs, self.bench, self.k)  # (n, k) each
        n = len(vecs)
        per_row = (time.perf_counter() - t0) / max(n, 1)
        batch = batch.append_column(KNN_IDX, pa.array(list(idx), pa.list_(pa.int64())))
        batch = batch.append_column(KNN_L2, pa.array(list(dist), pa.list_(pa.float32())))
        batch = batch.append_column(L2_THR, pa.array(np.full(n, self.threshold)))
        return batch.append_column(T_EMBED, pa.array(np.full(n, per_row)))
