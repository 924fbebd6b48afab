"""The memory plan: its activation figure against memory measured on CPU, and refusals."""

from __future__ import annotations

import pytest
import torch

from phi_ray.cli import main
from phi_ray.config import ModelConfig, TrainConfig
from phi_ray.model.phi import build_train_model, prepare_layers
from phi_ray.plan import GPUS, Gpu, PlanError, check_fits, plan_memory
from phi_ray.plan.measure import measure_step

# phi-shaped (head dim 32, MLP 4x, rotary 16, the real vocabulary) and small enough for CPU
_M = dict(
    n_layer=2,
    hidden_size=128,
    intermediate_size=512,
    n_head=4,
    rotary_dim=16,
    max_position_embeddings=512,
    attention_dropout=0.0,
    resid_dropout=0.0,
)


@pytest.mark.parametrize(
    "mode,activation",
    [
        ("none", "gelu_pytorch_tanh"),
        ("selective", "gelu_pytorch_tanh"),
        ("full", "gelu_pytorch_tanh"),
        pytest.param("none", "gelu_new", marks=pytest.mark.slow),
    ],
)
def test_activation_figure_matches_cpu_measurement(mode, activation):
    mc = ModelConfig(**_M, activation=activation)
    batch, seq = 1, 256
    model = build_train_model(mc, seed=0).train()
    prepare_layers(model, mode)
    x = torch.randint(0, 50000, (batch, seq + 1), generator=torch.Generator().manual_seed(0))
    measured = measure_step(model, x[:, :-1], x[:, 1:])
    plan = plan_memory(mc, seq, batch, GPUS["a100-40gb"], 1, "ddp", mode, act_bytes=4)
    # kept from forward to backward: activations + the fused loss's head gradient
    kept_loss = 4.0 * (mc.vocab_size * mc.hidden_size + mc.vocab_size)
    predicted = plan.terms["activations"] + kept_loss
    assert abs(predicted - measured["saved"]) / measured["saved"] < 0.15, (predicted, measured)
    # the activations alone, too (the head gradient is a large, exact part of the sum)
    acts = measured["saved"] - kept_loss
    assert abs(plan.terms["activations"] - acts) / acts < 0.15, (plan.terms, measured)


def test_refuses_a_micro_batch_that_cannot_fit_and_names_the_fix():
    mc = ModelConfig()  # phi-1
    tc = TrainConfig(micro_batch=8, strategy="ddp", precision="bf16", num_workers=8)
    with pytest.raises(PlanError) as e:
        check_fits(mc, tc, 2048, 8, GPUS["a100-40gb"], "pretrain")
    msg = str(e.value)
    assert "micro_batch 8" in msg and "A100" in msg and "--set pretrain." in msg
    # the first fix named is real: it fits when applied
    fix = msg.split("fix: ")[1].split(";")[0].split(" (see")[0]
    sets = dict(s.split("=") for s in fix.replace("--set ", "").split())
    fixed = TrainConfig(
        micro_batch=int(sets["pretrain.micro_batch"]),
        strategy=sets.get("pretrain.strategy", "ddp"),
        activation_checkpointing=sets.get("pretrain.activation_checkpointing", "none"),
        precision="bf16",
        num_workers=8,
    )
    assert check_fits(mc, fixed, 2048, 8, GPUS["a100-40gb"]).fits
    # nothing fits a device too small even for the weights: no micro-batch to offer
    with pytest.raises(PlanError, match="more GPUs"):
        check_fits(mc, tc, 2048, 1, Gpu("small", 8.0, 100.0, 1))


def test_cli_plan_phi1_fits_a100_40gb_and_refuses_plain_ddp(capsys):
    assert main(["plan", "--preset", "phi1", "--gpu", "a100-40gb"]) == 0
    out = capsys.readouterr().out
    assert "configured (fsdp, selective): FITS" in out and "GPU-hours" in out
    assert (
        main(
            [
                "plan",
                "--preset",
                "phi1",
                "--gpu",
                "a100-40gb",
                "--phase",
                "pretrain",
                "--set",
                "pretrain.strategy=ddp",
                "--set",
                "pretrain.activation_checkpointing=none",
            ]
        )
        == 3
    )
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert main(["plan", "--preset", "phi1-small", "--gpu", "a100-40gb"]) == 0
