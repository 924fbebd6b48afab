"""FSDP2 on GPUs (NCCL, bf16): the same losses as DDP within bf16 tolerance. Needs CUDA."""

from __future__ import annotations

import json
import os

import pytest
import torch
from train_fixtures import train_cfg, write_pack

from phi_ray.runs import RunDir
from phi_ray.train.stage import pretrain

pytestmark = pytest.mark.gpu


def _losses(res):
    with open(os.path.join(res.path, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def test_fsdp_matches_ddp_on_gpu(ray_session, tmp_path, tokenizer):
    n_gpus = torch.cuda.device_count()
    out = {}
    for strategy in ("ddp", "fsdp"):
        cfg = train_cfg(
            tmp_path,
            strategy,
            f"pretrain.strategy={strategy}",
            "pretrain.use_gpu=true",
            f"pretrain.num_workers={n_gpus}",
            f"pretrain.global_batch={8 * n_gpus}",
            "pretrain.micro_batch=4",
            "pretrain.max_steps=6",
            "pretrain.checkpoint_every=3",
            "pretrain.precision=bf16",
            "pretrain.progress=false",
        )
        run = RunDir.from_config(cfg)
        write_pack(run, tokenizer)
        res = pretrain(cfg, run)
        out[strategy] = _losses(res)
        m = json.loads(open(os.path.join(res.path, "metrics.jsonl")).readline())
        assert m["mfu"] > 0 and m["mem_alloc_gib"] > 0
    assert out["fsdp"] == pytest.approx(out["ddp"], rel=2e-2)
