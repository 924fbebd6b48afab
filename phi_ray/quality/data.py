"""Ray Data building blocks shared by the classify and score stages.

The embedding pipeline is two operators so that CPUs and accelerators overlap:

    corpus files -> read (``batch_rows`` rows at a time) + tokenize (CPU tasks)
                 -> embed / score (actor pool of concurrency..max_concurrency actors,
                    each num_gpus x num_cpus; see :func:`pool_bounds`)

Only token ids cross to the actors, never the file text, and actors keep the model
resident across batches. Ray Data fuses the read/tokenize tasks into the actors when
their resources match (CPU-only scoring: one process does it all, no copies); with
``num_gpus > 0`` they stay separate CPU tasks that run ahead of the accelerators. Each
actor call gets one reader block (rows of one file, never rows of several files bundled);
the embedder sorts it by length into forward batches of ``embedder.batch_size``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi_ray.config import EmbedderConfig, QualityConfig
from phi_ray.runs import resolve_fs


def list_parquet(dir_path: str, what: str) -> list[str]:
    """Sorted ``*.parquet`` files under a stage output dir (local or URI)."""
    fs, p = resolve_fs(dir_path)
    from pyarrow.fs import FileSelector, FileType

    info = fs.get_file_info(p)
    if info.type == FileType.NotFound:
        raise FileNotFoundError(f"{what}: {dir_path} does not exist")
    entries = fs.get_file_info(FileSelector(p, recursive=False))
    files = sorted(e.path for e in entries if e.path.endswith(".parquet") and e.size)
    prefix = dir_path.split("://", 1)[0] + "://" if "://" in dir_path else ""
    return [prefix + f for f in files]


def parquet_rows(path: str) -> int:
    fs, p = resolve_fs(path)
    with fs.open_input_file(p) as f:
        return pq.read_metadata(f).num_rows


def check_columns(path: str, needed: tuple[str, ...], what: str) -> None:
    """A clear error naming the file when an upstream file lacks a contract column."""
    fs, p = resolve_fs(path)
    with fs.open_input_file(p) as f:
        have = set(pq.read_schema(f).names)
    missing = [c for c in needed if c not in have]
    if missing:
        raise ValueError(f"{path}: {what} file lacks column(s) {missing}; has {sorted(have)}")


def _read_files(batch: dict[str, Any], rows: int) -> Iterator[pa.Table]:
    """Corpus files -> their (file, id, content) rows, ``rows`` at a time."""
    for path in batch["file"]:
        fs, p = resolve_fs(str(path))
        with fs.open_input_file(p) as f:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=rows, columns=["id", "content"]):
                t = pa.Table.from_batches([rb])
                yield t.append_column("file", pa.array([str(path)] * t.num_rows, pa.string()))


def corpus_dataset(files: list[str], rows: int) -> Any:
    """A Ray Dataset of (file, id, content) over corpus files, one block per file.

    ``read_parquet`` would pack small files into one read task; one block per file lets
    a file's results reach the driver as soon as that file is done, and (fused into the
    next operator) spares a separate read-task worker.
    """
    import ray

    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    return ds.map_batches(_read_files, fn_kwargs={"rows": rows}, batch_size=1, batch_format="numpy")


def tokenize_batch(batch: pa.Table, embedder: EmbedderConfig) -> pa.Table:
    """``content`` -> ``input_ids`` (head ``max_length`` tokens) and ``n_embedded``."""
    from phi_ray.quality.embed import load_tokenizer, tokenize_head

    tok = load_tokenizer(embedder.model)
    ids = tokenize_head(tok, batch.column("content").to_pylist(), embedder.max_length)
    out = batch.drop_columns(["content"])
    out = out.append_column("input_ids", pa.array(ids, type=pa.list_(pa.int32())))
    return out.append_column("n_embedded", pa.array([len(r) for r in ids], type=pa.int64()))


def _device(num_gpus: float) -> str:
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def _set_threads(num_cpus: float) -> None:
    import torch

    # Ray caps OMP threads at the actor's CPUs; say so to torch explicitly.
    torch.set_num_threads(max(1, round(num_cpus)))


class EmbedActor:
    """Actor-pool UDF: ``input_ids`` -> ``embedding`` (float32, ``(n, dim)``)."""

    def __init__(self, embedder: EmbedderConfig, seed: int, num_gpus: float, num_cpus: float):
        from phi_ray.quality.embed import Embedder

        _set_threads(num_cpus)
        self.embedder = Embedder(embedder, device=_device(num_gpus), seed=seed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        X = self.embedder.embed_tokens(list(batch["input_ids"]))
        return {"id": batch["id"], "embedding": X, "n_embedded": batch["n_embedded"]}


class ScoreActor:
    """Actor-pool UDF: ``input_ids`` -> ``quality`` (P(educational)) and ``kept``."""

    def __init__(self, classifier_dir: str, num_gpus: float, num_cpus: float):
        from phi_ray.quality.classifier import QualityClassifier

        _set_threads(num_cpus)
        self.clf = QualityClassifier.load(classifier_dir, device=_device(num_gpus))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        X = self.clf.embedder.embed_tokens(list(batch["input_ids"]))
        probs, kept = self.clf.score_embeddings(X)
        out = {k: v for k, v in batch.items() if k != "input_ids"}
        return out | {"quality": probs, "kept": kept}


def pool_bounds(q: QualityConfig, cluster_gpus: float | None = None) -> tuple[int, int]:
    """(min, max) embedding actors: an autoscaling pool, so GPU nodes added later get work.

    ``max_concurrency`` is the operator's bound (what the autoscaling cluster may grow
    to); unset, GPU actors are bounded by the GPUs the cluster has now (``cluster_gpus``,
    read from Ray when not given), and CPU actors stay a fixed pool of ``concurrency``.
    """
    lo = q.concurrency
    if q.max_concurrency is not None:
        return lo, q.max_concurrency
    if q.num_gpus <= 0:
        return lo, lo
    if cluster_gpus is None:
        import ray

        cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
    return lo, max(lo, int(cluster_gpus // q.num_gpus))


def actor_args(q: QualityConfig) -> dict[str, Any]:
    """``map_batches`` arguments for the embedding actor pool."""
    from ray.data import ActorPoolStrategy

    lo, hi = pool_bounds(q)
    return {
        "compute": ActorPoolStrategy(min_size=lo, max_size=hi),
        "num_gpus": q.num_gpus or None,
        "num_cpus": q.num_cpus,
        # None: one reader block per call. A row count here would also set how many
        # *files* a fused read task bundles (batch_rows files in one task, one shard burst).
        "batch_size": None,
        "batch_format": "numpy",
    }
