"""Packed token shards for training tests: real stdlib files, the real tokenizer, no Ray Data."""

from __future__ import annotations

import hashlib

import numpy as np
from conftest import stdlib_python_files

from phi_ray.config import load_config
from phi_ray.packing.stage import SPLITS
from phi_ray.packing.windows import WindowWriter, manifest, write_manifest
from phi_ray.runs import RunDir

# A tiny model (2 layers, hidden 64, seq 64): Ray Train tests stay cheap on 2 CPUs.
TINY = [
    "pack.seq_len=64",
    "model.hidden_size=64",
    "model.intermediate_size=256",
    "model.rotary_dim=8",
    "model.max_position_embeddings=128",
]


def train_cfg(root, name: str, *overrides: str):
    return load_config("tiny", [f"run.root={root}", f"run.name={name}", *TINY, *overrides])


def write_pack(run: RunDir, tokenizer, seq_len: int = 64, n_files: int = 40) -> None:
    """pack/{pretrain,finetune}/{train,val}/ from stdlib files, marked complete."""
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_python_files(n_files)]
    with run.stage("pack", "fixture-pack") as out:
        for phase, docs in (("pretrain", texts), ("finetune", texts[: n_files // 4])):
            packers = {s: WindowWriter(f"{out.tmp}/{phase}/{s}", seq_len, 256) for s in SPLITS}
            for i, text in enumerate(docs):
                split = "val" if i % 10 == 9 else "train"
                ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
                packers[split].add(np.asarray(ids), "stdlib")
            for s, p in packers.items():
                write_manifest(f"{out.tmp}/{phase}/{s}", manifest(seq_len, [p.close()]))
        out.finish(counts={"fixture": hashlib.sha256(b"pack").hexdigest()[:8]})
