"""A run finished through ``score`` without running the pipeline: real stdlib files and the
real tokenizer as ``ingest/corpus``, seeded scores as ``score/scored``."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import stdlib_python_files

from phi_ray.config import load_config
from phi_ray.runs import RunDir

TINY = [
    "pack.seq_len=32",
    "pack.windows_per_shard=16",  # several shards per arm: truncation cuts inside one
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.rotary_dim=8",
    "model.max_position_embeddings=128",
    "pretrain.global_batch=4",
    "pretrain.micro_batch=4",
    "pretrain.warmup_steps=0",
    "pretrain.checkpoint_every=2",
    "pretrain.eval_every=2",
    "pretrain.eval_batches=1",
    "pretrain.log_every=1",
    "ablate.max_steps=2",
    "ablate.seeds=1",
    "ablate.holdout_fraction=0.1",
    "ablate.eval_windows=8",
    "ablate.passk_limit=1",
    "evaluate.max_new_tokens=8",
    "evaluate.allow_weak_sandbox=true",
]


def ablate_cfg(root, name: str = "a", *overrides: str):
    return load_config("tiny", [f"run.root={root}", f"run.name={name}", *TINY, *overrides])


def write_scored_run(run: RunDir, tokenizer, n_files: int = 60, parts: int = 2) -> dict:
    """ingest/corpus/part-i + score/scored/part-i, both marked complete; returns id -> row."""
    files = stdlib_python_files(n_files)
    rng = np.random.default_rng(7)
    rows = {}
    for i, p in enumerate(files):
        text = p.read_text(encoding="utf-8", errors="replace")
        doc_id = hashlib.sha256(text.encode()).hexdigest()
        n_tok = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        rows[doc_id] = {"content": text, "n_tokens": n_tok, "quality": float(rng.random()),
                        "part": i % parts}  # fmt: skip
    cut = float(np.median([r["quality"] for r in rows.values()]))
    for r in rows.values():
        r["kept"] = r["quality"] > cut
    for stage, cols in (("ingest", "corpus"), ("score", "scored")):
        with run.stage(stage, f"fixture-{stage}") as out:
            for k in range(parts):
                mine = {i: r for i, r in rows.items() if r["part"] == k}
                if stage == "ingest":
                    t = {"id": list(mine), "content": [r["content"] for r in mine.values()],
                         "n_tokens": [r["n_tokens"] for r in mine.values()]}  # fmt: skip
                else:
                    t = {"id": list(mine), "kept": [r["kept"] for r in mine.values()],
                         "quality": pa.array([r["quality"] for r in mine.values()], pa.float32())}  # fmt: skip
                import os

                os.makedirs(f"{out.tmp}/{cols}", exist_ok=True)
                pq.write_table(pa.table(t), f"{out.tmp}/{cols}/part-{k:05d}.parquet")
            out.finish(counts={"rows": len(rows)})
    return rows
