"""pretrain/finetune on Ray Train (CPU, gloo): loss falls, export round-trips, finetune best."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from train_fixtures import train_cfg, write_pack

from phi_ray.model.phi import build_model
from phi_ray.runs import RunDir
from phi_ray.train.stage import finetune, pretrain

STEPS = 24


@pytest.fixture(scope="module")
def pretrained(ray_session, tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("train")
    cfg = train_cfg(
        root,
        "lm",
        f"pretrain.max_steps={STEPS}",
        "pretrain.global_batch=8",
        "pretrain.micro_batch=8",
        "pretrain.lr=5.0e-3",
        "pretrain.warmup_steps=2",
        "pretrain.checkpoint_every=12",
        "pretrain.eval_every=12",
        "pretrain.eval_batches=2",
        "pretrain.progress=false",
        "finetune.max_steps=4",
        "finetune.global_batch=8",
        "finetune.micro_batch=4",
        "finetune.checkpoint_every=2",
        "finetune.eval_every=2",
        "finetune.eval_batches=2",
        "finetune.lr=1.0e-4",
        "finetune.warmup_steps=1",
        "finetune.progress=false",
    )
    run = RunDir.from_config(cfg)
    write_pack(run, tokenizer)
    before = signal.getsignal(signal.SIGINT)
    res = pretrain(cfg, run)
    # Ray Train installs a SIGINT handler in fit() and leaves it; the stage puts ours back,
    # so a Ctrl-C in a later stage is not sent to a finished trainer's controller.
    assert signal.getsignal(signal.SIGINT) is before
    return cfg, run, res


def _metrics(stage_path):
    with open(os.path.join(stage_path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_pretrain_loss_falls_with_metrics_every_step(pretrained):
    cfg, _run, res = pretrained
    m = _metrics(res.path)
    assert [r["step"] for r in m] == list(range(1, STEPS + 1))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_rss_gib"):
        assert all(r[key] >= 0 for r in m), key
    assert 0 < m[-1]["mfu"] < 5  # against a measured peak: the right order of magnitude
    first, last = m[0]["loss"], sum(r["loss"] for r in m[-3:]) / 3
    assert first > 10.0 and last < first - 2.0, (first, last)
    # Linear warmup to lr, then linear decay towards min_lr.
    assert m[0]["lr"] < m[1]["lr"] == pytest.approx(cfg.pretrain.lr)
    assert m[-1]["lr"] < m[STEPS // 2]["lr"] < m[2]["lr"]
    assert "val_loss" in m[11] and m[-1]["val_loss"] < m[11]["val_loss"]
    assert res.success["steps"] == STEPS and res.counts["tokens"] == STEPS * 8 * 64


def test_pretrain_curves_are_in_tensorboard_under_the_run(pretrained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _cfg, run, res = pretrained
    tb = res.success["tensorboard"]
    assert tb.startswith(run.path("tensorboard", "pretrain"))
    acc = EventAccumulator(tb, size_guidance={"scalars": 0})
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    m = _metrics(res.path)
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in m]
    assert [e.step for e in acc.Scalars("val/loss")] == [12, 24]
    assert {"train/lr", "train/tokens_per_s", "train/mfu"} <= set(acc.Tags()["scalars"])


def test_exported_model_loads_with_auto_and_matches_training_logits(pretrained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, _run, res = pretrained
    model_dir = os.path.join(res.path, "model")
    assert os.path.exists(os.path.join(model_dir, "model.safetensors"))
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    # The training-side weights: the last Ray Train checkpoint's model.pt.
    ref = build_model(cfg.model, "cpu").eval()
    ref.load_state_dict(
        torch.load(os.path.join(res.success["checkpoint"], "model.pt")), strict=False
    )
    ids = tok("def add(a, b):\n    return a + b\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
    assert len(tok) == 50295


def test_finetune_starts_from_pretrain_and_keeps_best(pretrained):
    from safetensors.torch import load_file

    cfg, run, res = pretrained
    ft = finetune(cfg, run)
    m = _metrics(ft.path)
    assert len(m) == 4 and [r for r in m if "val_loss" in r]
    # Starting from the pretrained weights: the first loss is far below a fresh init's ~10.9.
    assert m[0]["loss"] < _metrics(res.path)[0]["loss"] - 1.5
    assert ft.success["exported"] == "best"
    best = torch.load(os.path.join(ft.success["checkpoint"], "best_model.pt"))
    exported = load_file(os.path.join(ft.path, "model", "model.safetensors"))
    for k, v in exported.items():
        torch.testing.assert_close(v, best[k])
    assert min(r["val_loss"] for r in m if "val_loss" in r) == pytest.approx(
        ft.success["best_val_loss"]
    )
    assert finetune(cfg, run).skipped
