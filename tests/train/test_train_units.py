"""Pure pieces of training: the batch plan, the LR schedule, FLOPs per token, metrics log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phi_ray.config import ConfigError, TrainConfig, load_config
from phi_ray.train.data import BatchPlan, eval_indices
from phi_ray.train.loop import lr_lambda
from phi_ray.train.metrics import MetricsLog, flops_per_token, model_flops_per_token


def _step_windows(plan: BatchPlan, step: int) -> np.ndarray:
    return np.concatenate(
        [plan.indices(step, r, m) for r in range(plan.world_size) for m in range(plan.accum)]
    )


def test_batches_depend_on_seed_and_step_not_on_workers():
    one = BatchPlan(n=50, seed=3, global_batch=8, world_size=1, micro_batch=2)
    two = BatchPlan(n=50, seed=3, global_batch=8, world_size=2, micro_batch=2)
    assert (one.accum, two.accum) == (4, 2)
    for step in range(20):  # crosses epoch boundaries (8 x 20 > 50)
        np.testing.assert_array_equal(_step_windows(one, step), _step_windows(two, step))
    # Each epoch is a permutation: every window exactly once per 50 positions.
    seen = np.concatenate([_step_windows(one, s) for s in range(25)])  # 200 = 4 epochs
    for e in range(4):
        assert sorted(seen[e * 50 : (e + 1) * 50]) == list(range(50))
    assert not np.array_equal(seen[:50], seen[50:100])  # reshuffled per epoch
    other = BatchPlan(n=50, seed=4, global_batch=8, world_size=1, micro_batch=2)
    assert not np.array_equal(_step_windows(one, 0), _step_windows(other, 0))


def test_eval_windows_are_split_across_ranks_without_overlap():
    parts = [np.concatenate(eval_indices(100, r, 2, 4, 3)) for r in range(2)]
    assert sorted(np.concatenate(parts)) == list(range(24))


def test_lr_warmup_then_linear_decay_to_min_lr():
    tc = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=14, num_workers=1)
    f = lr_lambda(tc)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(9) == pytest.approx(0.55) and f(14) == pytest.approx(0.1) and f(100) == 0.1


def test_global_batch_must_split_over_workers():
    with pytest.raises(ConfigError, match="micro_batch x num_workers"):
        TrainConfig(global_batch=12, micro_batch=8, num_workers=1)


def test_flops_per_token_of_phi1_matches_the_paper_scale():
    from phi_ray.model.phi import build_model

    cfg = load_config("tiny", ["model.n_layer=1"])
    model = build_model(cfg.model)
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    want = 6 * n + 12 * 1 * cfg.model.n_head * (cfg.model.hidden_size // cfg.model.n_head) * 128
    assert model_flops_per_token(model, 128) == want
    # phi-1: 6 x 1.3B = 7.8 GFLOPs/token + 1.2 for attention at T=2048.
    phi1 = flops_per_token(1.3e9, 24, 32, 64, 2048)
    assert 8.9e9 < phi1 < 9.1e9


def test_metrics_log_drops_lines_past_the_resumed_step(tmp_path):
    path = str(tmp_path / "m" / "metrics.jsonl")
    log = MetricsLog(path, 0)
    for s in range(1, 6):
        log.write({"step": s, "loss": 10.0 - s})
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # torn by a crash
    log = MetricsLog(path, 3)  # resumed from the step-3 checkpoint
    log.write({"step": 4, "loss": 0.0})
    log.close()
    with open(path) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3, 4]
