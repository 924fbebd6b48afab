"""A step that cannot fit its GPUs is refused once, naming the fix: on the driver before
any worker starts, and in a worker without Ray Train's retries (max_failures)."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
from train_fixtures import train_cfg

from phi_ray.config import ModelConfig, load_config
from phi_ray.plan import PlanError, check_before_start, cluster_gpus
from phi_ray.runs import RunDir
from phi_ray.train.stage import (
    loop_config,
    make_trainer,
    pretrain,
    raise_refusal,
    refusal_path,
)

# phi-1 at micro-batch 8, plain DDP, no checkpointing: ~55 GiB per GPU (see tests/plan)
UNFIT = ["pretrain.strategy=ddp", "pretrain.activation_checkpointing=none"]


def _phi1(tmp_path, *sets: str):
    return load_config("phi1", [f"run.root={tmp_path}", "run.name=big", *sets])


def test_cluster_gpu_types_from_ray_accelerator_resources():
    assert cluster_gpus({"CPU": 8.0, "GPU": 8.0, "accelerator_type:H100": 1.0}) == ["h100-80gb"]
    # Ray detects an unsized "A100"; a node's sized label replaces it
    assert cluster_gpus({"accelerator_type:A100": 1.0}) == ["a100-40gb", "a100-80gb"]
    both = {"accelerator_type:A100": 1.0, "accelerator_type:A100-40G": 1.0}
    assert cluster_gpus(both) == ["a100-40gb"]
    assert cluster_gpus({"CPU": 2.0, "accelerator_type:TPU-V4": 1.0}) == []


def test_driver_check_uses_the_cluster_or_the_configured_gpu(tmp_path):
    cfg = _phi1(tmp_path, *UNFIT)
    a100_40 = {"accelerator_type:A100": 1.0, "accelerator_type:A100-40G": 1.0}
    with pytest.raises(PlanError, match="A100-SXM4-40GB"):
        check_before_start(cfg, "pretrain", a100_40)
    # an unsized A100 may be the 80 GB one, where it fits: the worker checks its device
    assert check_before_start(cfg, "pretrain", {"accelerator_type:A100": 1.0}).fits
    assert check_before_start(cfg, "pretrain", {"accelerator_type:H200": 1.0}).fits
    assert check_before_start(cfg, "pretrain", {"CPU": 16.0}) is None  # no GPU node up yet
    # the configured GPU wins over whatever is up
    pinned = _phi1(tmp_path, *UNFIT, "pretrain.gpu=a100-40gb")
    with pytest.raises(PlanError):
        check_before_start(pinned, "pretrain", {"accelerator_type:H200": 1.0})
    cpu = _phi1(tmp_path, *UNFIT, "pretrain.gpu=a100-40gb", "pretrain.use_gpu=false")
    assert check_before_start(cpu, "pretrain", a100_40) is None
    # the presets as shipped fit the p4d's A100-40GB
    for preset in ("phi1", "phi1-small"):
        ok = load_config(preset, [f"run.root={tmp_path}"])
        for phase in ("pretrain", "finetune"):
            assert check_before_start(ok, phase, a100_40).fits


def test_pretrain_refuses_on_the_driver_naming_the_fix(ray_session, tmp_path):
    cfg = _phi1(tmp_path, *UNFIT, "pretrain.gpu=a100-40gb")
    run = RunDir.from_config(cfg)
    t0 = time.monotonic()
    with pytest.raises(PlanError) as e:
        pretrain(cfg, run)  # no pack output either: the plan is checked first
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "micro_batch 8" in msg and "fix: --set pretrain." in msg
    work = run.work_path("pretrain")
    ran = [d for d in os.listdir(work) if d.startswith("ray-")] if os.path.isdir(work) else []
    assert not ran  # no trainer, no worker ever started


@pytest.mark.slow  # a Ray Train start: ~20 s idle, 85 s under load
def test_worker_refusal_is_reported_once_not_retried(ray_session, tmp_path):
    """A worker on a GPU the driver could not know (here a CPU worker told it is an A100
    40GB) returns its refusal; with max_failures=3 a raise would have run four attempts."""
    cfg = train_cfg(tmp_path, "refuse", "pretrain.max_failures=3", "pretrain.progress=false")
    run = RunDir.from_config(cfg)
    lc = loop_config(cfg, run, "pretrain", None, None)
    lc["model"] = dataclasses.asdict(ModelConfig())  # phi-1
    lc["seq_len"] = 2048
    lc["train"].update(micro_batch=8, global_batch=8, strategy="ddp")
    lc["device_gpu"] = "a100-40gb"
    trainer = make_trainer(cfg, run, "pretrain", str(tmp_path / "ckpt"), "ray-refuse", lc)
    t0 = time.monotonic()
    result = trainer.fit()
    took = time.monotonic() - t0
    assert result.error is None and result.checkpoint is None
    path = refusal_path(str(tmp_path / "ckpt"), "ray-refuse")
    with pytest.raises(PlanError, match=r"micro_batch 8.*fix: --set pretrain\."):
        raise_refusal(path)
    raise_refusal(path)  # read once: a rerun that fits is not refused by a stale file
    assert took < 120, took
