"""Ray Train on CPU/gloo: 2 workers == 1 worker with accumulation; exact resume; crash recovery."""

from __future__ import annotations

import json
import os

import pytest
from train_fixtures import train_cfg, write_pack

from phi_ray.runs import RunDir
from phi_ray.train.stage import FAULT_ENV, pretrain

N = 3  # checkpoint every N steps; runs are 2N steps
COMMON = [
    f"pretrain.max_steps={2 * N}",
    f"pretrain.checkpoint_every={N}",
    "pretrain.global_batch=8",
    "pretrain.lr=3.0e-3",
    "pretrain.warmup_steps=1",
    f"pretrain.eval_every={2 * N}",
    "pretrain.eval_batches=1",
    "pretrain.progress=false",
]


def _losses(res):
    with open(os.path.join(res.path, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def _train(root, tokenizer, name, *extra):
    cfg = train_cfg(root, name, *COMMON, *extra)
    run = RunDir.from_config(cfg)
    if not run.is_complete("pack"):
        write_pack(run, tokenizer)
    return cfg, run


@pytest.fixture(scope="module")
def straight(ray_session, tmp_path_factory, tokenizer):
    """One worker, accumulation 2 (micro 4 x 2 = global 8), 2N steps without a stop."""
    root = tmp_path_factory.mktemp("resume")
    cfg, run = _train(
        root, tokenizer, "straight", "pretrain.micro_batch=4", "pretrain.num_workers=1"
    )
    return root, _losses(pretrain(cfg, run))


def test_two_workers_match_one_worker_with_accumulation(straight, tokenizer):
    root, ref = straight
    cfg, run = _train(root, tokenizer, "ddp", "pretrain.micro_batch=4", "pretrain.num_workers=2")
    got = _losses(pretrain(cfg, run))
    assert len(got) == len(ref) == 2 * N
    assert got == pytest.approx(ref, rel=2e-4)
    assert ref[-1] < ref[0]


def test_kill_then_rerun_resumes_exactly(straight, tokenizer, monkeypatch):
    root, ref = straight
    cfg, run = _train(
        root,
        tokenizer,
        "killed",
        "pretrain.micro_batch=4",
        "pretrain.num_workers=1",
        "pretrain.max_failures=0",
    )
    # Hard-kill the worker at step N+1, after the step-N checkpoint; no retries allowed.
    monkeypatch.setenv(FAULT_ENV, f"{N + 1}:{root / 'killed.marker'}")
    with pytest.raises(RuntimeError, match="resume from the latest"):
        pretrain(cfg, run)
    assert not run.is_complete("pretrain")
    monkeypatch.delenv(FAULT_ENV)
    res = pretrain(cfg, run)  # the rerun picks up Ray Train's latest checkpoint (step N)
    got = _losses(res)
    assert len(got) == 2 * N  # the metrics log reads as one run
    assert got == pytest.approx(ref, rel=1e-5)


def test_worker_crash_is_recovered_by_failure_config(straight, tokenizer, monkeypatch):
    root, ref = straight
    cfg, run = _train(
        root,
        tokenizer,
        "crash",
        "pretrain.micro_batch=4",
        "pretrain.num_workers=1",
        "pretrain.max_failures=1",
    )
    monkeypatch.setenv(FAULT_ENV, f"{N + 1}:{root / 'crash.marker'}")
    res = pretrain(cfg, run)  # one fit: the restarted worker group resumes from step N
    assert os.path.exists(root / "crash.marker")
    assert _losses(res) == pytest.approx(ref, rel=1e-5)
