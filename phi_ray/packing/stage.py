"""``phi-ray pack``: tokenize documents and pack them into fixed windows of token ids.

Two datasets are packed separately, each with a held-out validation split:

- ``pack/pretrain/{train,val}/``: ``score/filtered`` content + ``synth/textbooks`` content;
- ``pack/finetune/{train,val}/``: exercises (prompt + completion), from ``decontam/exercises``
  when decontam is complete (and ``pack.use_decontaminated``), else ``synth/exercises``.

Ray Data tokenizes (batched tokenizer calls in ``map_batches`` tasks) and computes each
document's order key, a seeded hash of its id: the deterministic shuffle. Documents are then
range-partitioned by that key (``pack.tokens_per_partition`` tokens a range) and each key
range of each split is sorted, joined with ``<|endoftext|>`` and cut into windows of
``seq_len + 1`` tokens with a stride of ``seq_len`` by its own Ray task
(``packing/windows.py``), which writes its own shards. The same inputs and seed give
byte-identical shards whatever the cluster's block layout or task order, and the driver
holds only the manifests. A document goes wholly to train or to val (chosen by another
seeded hash of its id), so val never leaks into train.

Shards are ``part-PPPPP-shard-SSSSS.npy`` uint16 arrays of shape (n_windows, seq_len + 1) plus a
``manifest.json`` (seq_len, n_windows, n_tokens, shards in order, sources, partitions).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from phi_ray.config import Config
from phi_ray.packing import windows
from phi_ray.runs import RunDir, StageResult

log = logging.getLogger("phi_ray.pack")

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Source:
    """One input of a packed dataset: Parquet files and how to make a document's text."""

    name: str
    files: list[str]
    kind: str  # "content" or "exercise"


def _parquet_files(run: RunDir, *parts: str) -> list[str]:
    root = run.path(*parts)
    if run.local:
        return sorted(glob.glob(os.path.join(root, "**", "*.parquet"), recursive=True))
    from pyarrow import fs as pafs

    sel = pafs.FileSelector(run._fs_path(root), recursive=True, allow_not_found=True)
    scheme = run.uri.split("://", 1)[0]
    infos = run.fs.get_file_info(sel)
    return sorted(f"{scheme}://{i.path}" for i in infos if i.path.endswith(".parquet"))


def plan_sources(cfg: Config, run: RunDir) -> dict[str, list[Source]]:
    """The inputs of each packed dataset, with clear errors when an upstream is missing."""
    run.require("score", needed_by="pack")
    pretrain = [Source("filtered", _parquet_files(run, "score", "filtered"), "content")]
    if run.is_complete("synth"):
        books = _parquet_files(run, "synth", "textbooks")
        if books:
            pretrain.append(Source("textbooks", books, "content"))
    if cfg.pack.use_decontaminated and run.is_complete("decontam"):
        ex = Source("exercises", _parquet_files(run, "decontam", "exercises"), "exercise")
    else:
        run.require("synth", needed_by="pack (finetune exercises)")
        ex = Source("exercises", _parquet_files(run, "synth", "exercises"), "exercise")
    for src in [*pretrain, ex]:
        if not src.files:
            raise FileNotFoundError(f"pack: no Parquet files for '{src.name}' in the run {run.uri}")
    return {"pretrain": pretrain, "finetune": [ex]}


def _unit_hash(seed: int, salt: str, doc_id: str) -> int:
    """A 63-bit hash of (seed, salt, id): the document's order key or split draw."""
    h = hashlib.sha256(f"{seed}:{salt}:{doc_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") >> 1


def _texts(batch: dict[str, np.ndarray], kind: str) -> list[str]:
    """A document's text: the file/textbook content, or an exercise's prompt + completion."""
    if kind == "content":
        return [str(t or "") for t in batch["content"]]
    out = []
    for p, c in zip(batch["prompt"], batch["completion"], strict=True):
        p, c = str(p or ""), str(c or "")
        out.append(p + c if not p or p.endswith("\n") or c.startswith("\n") else f"{p}\n{c}")
    return out


def _tokenize(
    batch: dict[str, np.ndarray],
    source: str,
    kind: str,
    seed: int,
    val_fraction: float,
    tokenizer: str | None,
) -> pa.Table:
    """``map_batches`` function: text -> token ids + order key + split, one tokenizer call.

    A task, not an actor pool: the tokenizer is cached per worker process
    (``get_tokenizer`` is memoised), and tasks leave CPUs free for the sort that follows.
    """
    from phi_ray.model.tokenizer import get_tokenizer

    ids = [str(i) for i in batch["id"]]
    tok = get_tokenizer(tokenizer)
    enc = tok(_texts(batch, kind), add_special_tokens=False, verbose=False)["input_ids"]
    val_cut = int(val_fraction * 2**63)
    lengths = np.array([len(e) for e in enc], dtype=np.int64)
    # An Arrow list column, not numpy arrays: Ray would make those a tensor extension type
    # whose fixed/variable-shape flavour differs between blocks and breaks the shuffle.
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.fromiter((t for e in enc for t in e), dtype=np.int32, count=int(offsets[-1]))
    return pa.table(
        {
            "key": np.array([_unit_hash(seed, "order", i) for i in ids], dtype=np.int64),
            "val": np.array([_unit_hash(seed, "val", i) < val_cut for i in ids], dtype=bool),
            "source": pa.array([source] * len(ids), pa.string()),
            "n_tokens": lengths,
            "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        }
    )


def _tokenized(cfg: Config, sources: list[Source]) -> Any:
    """One Ray Dataset of tokenized documents from all sources (in no particular order)."""
    import ray.data

    parts = []
    for src in sources:
        cols = ["id", "content"] if src.kind == "content" else ["id", "prompt", "completion"]
        ds = ray.data.read_parquet(src.files, columns=cols)
        ds = ds.map_batches(
            _tokenize,
            fn_kwargs={
                "source": src.name,
                "kind": src.kind,
                "seed": cfg.run.seed,
                "val_fraction": cfg.pack.val_fraction,
                "tokenizer": cfg.pack.tokenizer,
            },
            batch_size=cfg.pack.tokenize_batch_size,
            batch_format="numpy",
            concurrency=cfg.pack.tokenize_concurrency,
            zero_copy_batch=True,
        )
        parts.append(ds)
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


# Code averages ~3.3 characters a token in CodeGen's BPE; 3 keeps the estimate above the count.
_BYTES_PER_TOKEN = 3.0


def _n_parts(sources: list[Source], tokens_per_partition: int) -> int:
    """Key ranges such that one holds at most about ``tokens_per_partition`` tokens.

    Estimated from the text columns' uncompressed sizes in the Parquet footers (one small
    read per file, no row read), so it is a pure function of the inputs: the same inputs and
    seed give byte-identical shards.
    """
    import pyarrow.parquet as pq

    from phi_ray.runs import resolve_fs

    text_bytes = 0
    for src in sources:
        cols = {"content"} if src.kind == "content" else {"prompt", "completion"}
        for f in src.files:
            fs, path = resolve_fs(f)
            meta = pq.ParquetFile(path, filesystem=fs).metadata
            for g in range(meta.num_row_groups):
                rg = meta.row_group(g)
                for c in range(rg.num_columns):
                    col = rg.column(c)
                    if col.path_in_schema in cols:
                        text_bytes += col.total_uncompressed_size
    return max(1, math.ceil(text_bytes / _BYTES_PER_TOKEN / tokens_per_partition))


def pack_dataset(cfg: Config, run: RunDir, sources: list[Source], out_root: str) -> dict:
    """Tokenize ``sources`` and write ``<out_root>/{train,val}/`` shards; returns manifests.

    Everything proportional to the corpus stays in Ray: tokenized documents stream into a
    shuffle (object store, spilling to disk) that range-partitions them by order key; each
    (key range, split) group is packed and written by its own task (``windows.pack_group``).
    The driver holds one summary row per group.
    """
    from ray.data.context import ShuffleStrategy

    n_parts = _n_parts(sources, cfg.pack.tokens_per_partition)
    windows.ensure_dirs(out_root, SPLITS)
    grouped = _tokenized(cfg, sources).map_batches(
        windows.assign_groups, fn_kwargs={"n_parts": n_parts}, batch_format="pyarrow"
    )
    # The sort-based shuffle, for this dataset only: Ray 2.60's hash shuffle starts
    # aggregator actors that swamp a small cluster, and its reduce can concatenate an empty
    # schemaless table with typed ones (ArrowInvalid). A group still lands in one block.
    grouped.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    rows = (
        grouped.groupby("group")
        .map_groups(
            windows.pack_group,
            fn_kwargs={
                "out_root": out_root,
                "seq_len": cfg.pack.seq_len,
                "windows_per_shard": cfg.pack.windows_per_shard,
            },
            batch_format="numpy",
        )
        .take_all()  # one small row per group: at most 2 * n_parts
    )
    parts: dict[str, list[tuple[int, dict]]] = {s: [] for s in SPLITS}
    for r in rows:
        parts[str(r["split"])].append((int(r["part"]), json.loads(r["summary"])))
    manifests = {}
    for split in SPLITS:
        summaries = [s for _, s in sorted(parts[split], key=lambda t: t[0])]
        manifests[split] = windows.manifest(cfg.pack.seq_len, summaries, partitions=n_parts)
    empty = sum(s["empty_text"] for split in SPLITS for _, s in parts[split])
    manifests["train"]["dropped"] = {"empty_text": empty}
    for split in SPLITS:
        windows.write_manifest(f"{out_root}/{split}", manifests[split])
    if manifests["train"]["n_windows"] == 0:
        raise ValueError(
            f"pack: {out_root} has no training window of seq_len+1={cfg.pack.seq_len + 1} "
            "tokens; more input text or a smaller pack.seq_len is needed"
        )
    log.info("pack: %d key range(s) -> %s", n_parts, out_root)
    return manifests


def run(cfg: Config, run: RunDir) -> StageResult:
    """Pack the pretraining mix and the finetuning exercises into token windows."""
    from phi_ray.runtime import init_ray

    init_ray(cfg)
    upstream = ("score", "synth", "decontam")
    h = run.config_hash(cfg, ("pack",), upstream=upstream) + f"-seed{cfg.run.seed}"
    with run.stage("pack", h) as out:
        if out.skipped:
            return out.result
        plan = plan_sources(cfg, run)
        counts: dict[str, Any] = {}
        manifests = {}
        for name, sources in plan.items():
            m = pack_dataset(cfg, run, sources, f"{out.tmp}/{name}")
            manifests[name] = {s: {k: m[s][k] for k in ("n_windows", "n_tokens")} for s in SPLITS}
            for s in SPLITS:
                counts[f"{name}_{s}_windows"] = m[s]["n_windows"]
                counts[f"{name}_{s}_tokens"] = m[s]["n_tokens"]
            counts[f"{name}_dropped_empty_text"] = m["train"]["dropped"]["empty_text"]
        log.info("pack: %s", counts)
        return out.finish(
            counts=counts,
            seq_len=cfg.pack.seq_len,
            inputs={k: {s.name: len(s.files) for s in v} for k, v in plan.items()},
        )
