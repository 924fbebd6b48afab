"""``phi-ray pack``: tokenize documents and pack them into fixed windows of token ids.

Two datasets are packed separately, each with a held-out validation split:

- ``pack/pretrain/{train,val}/``: ``score/filtered`` content + ``synth/textbooks`` content;
- ``pack/finetune/{train,val}/``: exercises (prompt + completion), from ``decontam/exercises``
  when decontam is complete (and ``pack.use_decontaminated``), else ``synth/exercises``.

Ray Data tokenizes (batched tokenizer calls in ``map_batches`` tasks); documents are then
sorted by a seeded hash of their id, which is the deterministic shuffle: the same inputs
and seed give byte-identical shards whatever the cluster's block layout or task order. The driver then streams the
sorted documents, joins them with ``<|endoftext|>`` into one token stream per split and cuts
windows of ``seq_len + 1`` tokens with a stride of ``seq_len`` (consecutive windows share
one token, so every token is a prediction target exactly once). A document goes wholly to
train or to val (chosen by another seeded hash of its id), so val never leaks into train.

Shards are ``shard-00000.npy`` uint16 arrays of shape (n_windows, seq_len + 1) plus a
``manifest.json`` (seq_len, n_windows, n_tokens, shards, sources).
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phi_ray.config import Config
from phi_ray.model.tokenizer import EOS_ID
from phi_ray.runs import RunDir, StageResult

log = logging.getLogger("phi_ray.pack")

SPLITS = ("train", "val")
_UINT16_MAX = np.iinfo(np.uint16).max


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
) -> dict[str, Any]:
    """``map_batches`` function: text -> token ids + order key + split, one tokenizer call.

    A task, not an actor pool: the tokenizer is cached per worker process
    (``get_tokenizer`` is memoised), and tasks leave CPUs free for the sort that follows.
    """
    from phi_ray.model.tokenizer import get_tokenizer

    ids = [str(i) for i in batch["id"]]
    tok = get_tokenizer(tokenizer)
    enc = tok(_texts(batch, kind), add_special_tokens=False, verbose=False)["input_ids"]
    val_cut = int(val_fraction * 2**63)
    return {
        "key": np.array([_unit_hash(seed, "order", i) for i in ids], dtype=np.int64),
        "val": np.array([_unit_hash(seed, "val", i) < val_cut for i in ids], dtype=bool),
        "source": np.array([source] * len(ids), dtype=object),
        "n_tokens": np.array([len(e) for e in enc], dtype=np.int64),
        "tokens": [np.asarray(e, dtype=np.int32) for e in enc],
    }


@dataclass
class _Packer:
    """Joins documents with EOS into one stream and cuts windows of seq_len + 1 tokens."""

    out_dir: str
    run: RunDir
    seq_len: int
    windows_per_shard: int
    buf: list[np.ndarray] = field(default_factory=list)
    buffered: int = 0
    windows: list[np.ndarray] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    n_windows: int = 0
    n_docs: int = 0
    sources: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, tokens: np.ndarray, source: str) -> None:
        if tokens.size and int(tokens.max()) > _UINT16_MAX:
            raise ValueError(f"pack: token id {int(tokens.max())} does not fit in uint16")
        doc = np.concatenate([tokens.astype(np.uint16), np.array([EOS_ID], np.uint16)])
        self.buf.append(doc)
        self.buffered += doc.size
        self.n_docs += 1
        s = self.sources.setdefault(source, {"docs": 0, "tokens": 0})
        s["docs"] += 1
        s["tokens"] += int(doc.size)
        if self.buffered >= 64 * (self.seq_len + 1):
            self._cut(final=False)

    def _cut(self, final: bool) -> None:
        stream = np.concatenate(self.buf) if self.buf else np.zeros(0, np.uint16)
        n = (stream.size - 1) // self.seq_len if stream.size > self.seq_len else 0
        if n:
            idx = np.arange(n)[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
            self.windows.append(stream[idx])  # (n, seq_len + 1)
        # Keep the last token: it is the first input of the next window.
        rest = stream[n * self.seq_len :]
        self.buf, self.buffered = ([rest], rest.size) if rest.size else ([], 0)
        while sum(w.shape[0] for w in self.windows) >= self.windows_per_shard or (
            final and self.windows
        ):
            self._flush()

    def _flush(self) -> None:
        allw = np.concatenate(self.windows)
        shard, rest = allw[: self.windows_per_shard], allw[self.windows_per_shard :]
        self.windows = [rest] if rest.shape[0] else []
        name = f"shard-{len(self.shards):05d}.npy"
        with self.run.fs.open_output_stream(self.run._fs_path(f"{self.out_dir}/{name}")) as f:
            np.save(f, np.ascontiguousarray(shard))
        self.shards.append({"file": name, "n_windows": int(shard.shape[0])})
        self.n_windows += int(shard.shape[0])

    def close(self) -> dict[str, Any]:
        """Write the last shard and the manifest; returns the manifest."""
        self._cut(final=True)
        tail = max(self.buffered - 1, 0)  # tokens after the last full window
        manifest = {
            "seq_len": self.seq_len,
            "window": self.seq_len + 1,
            "stride": self.seq_len,
            "dtype": "uint16",
            "eos_id": EOS_ID,
            "n_windows": self.n_windows,
            "n_tokens": self.n_windows * self.seq_len,  # prediction targets
            "n_docs": self.n_docs,
            "dropped_tail_tokens": tail,
            "shards": self.shards,
            "sources": self.sources,
        }
        self.run.write_json(f"{self.out_dir}/manifest.json", manifest)
        return manifest


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


def _sorted_docs(cfg: Config, sources: list[Source]) -> list[tuple[int, bool, str, np.ndarray]]:
    """Tokenized documents as (order key, is_val, source, uint16 tokens), sorted by key.

    The sort happens on the driver over compact uint16 arrays (2 bytes a token): a Ray Data
    ``sort`` is an all-to-all shuffle that costs far more than it saves at the sizes one
    packing node holds (phi-1's ~7B tokens are ~14 GB here).
    """
    from tqdm.auto import tqdm

    docs = []
    bar = tqdm(desc="tokenize", unit="doc", mininterval=2.0)
    for batch in _tokenized(cfg, sources).iter_batches(batch_size=1024, batch_format="numpy"):
        for key, toks, is_val, src in zip(
            batch["key"], batch["tokens"], batch["val"], batch["source"], strict=True
        ):
            toks = np.asarray(toks)
            if toks.size and int(toks.max()) > _UINT16_MAX:
                raise ValueError(f"pack: token id {int(toks.max())} does not fit in uint16")
            docs.append((int(key), bool(is_val), str(src), toks.astype(np.uint16)))
        bar.update(len(batch["key"]))
    bar.close()
    docs.sort(key=lambda d: d[0])  # the seeded shuffle; keys are 63-bit hashes of ids
    return docs


def pack_dataset(cfg: Config, run: RunDir, sources: list[Source], out_root: str) -> dict:
    """Tokenize ``sources`` and write ``<out_root>/{train,val}/`` shards; returns manifests."""
    for split in SPLITS:
        run.fs.create_dir(run._fs_path(f"{out_root}/{split}"), recursive=True)
    packers = {
        s: _Packer(f"{out_root}/{s}", run, cfg.pack.seq_len, cfg.pack.windows_per_shard)
        for s in SPLITS
    }
    empty = 0
    for _, is_val, src, toks in _sorted_docs(cfg, sources):
        if toks.size == 0:
            empty += 1
            continue
        packers["val" if is_val else "train"].add(toks, src)
    manifests = {s: p.close() for s, p in packers.items()}
    manifests["train"]["dropped"] = {"empty_text": empty}
    run.write_json(f"{out_root}/train/manifest.json", manifests["train"])
    if manifests["train"]["n_windows"] == 0:
        raise ValueError(
            f"pack: {out_root} has no training window of seq_len+1={cfg.pack.seq_len + 1} "
            "tokens; more input text or a smaller pack.seq_len is needed"
        )
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
