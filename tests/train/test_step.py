"""The training step's parts against their originals: same losses and gradients.

gelu_pytorch_tanh vs gelu_new, the chunked linear cross-entropy vs full fp32 logits,
activation checkpointing vs none, torch.compile vs eager (slow: compiling on CPU takes
minutes), and the export still loading as a plain PhiForCausalLM.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phi_ray.config import ModelConfig
from phi_ray.model.loss import chunk_tokens, linear_cross_entropy
from phi_ray.model.phi import build_model, build_train_model, prepare_layers

_M = dict(
    n_layer=2,
    hidden_size=64,
    intermediate_size=256,
    n_head=4,
    rotary_dim=8,
    max_position_embeddings=128,
    attention_dropout=0.0,
    resid_dropout=0.0,
)


def _batch(b=2, t=48, seed=0):
    return torch.randint(0, 50295, (b, t + 1), generator=torch.Generator().manual_seed(seed))


def _plain_loss(model, w):
    logits = model(input_ids=w[:, :-1]).logits  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten())


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(a, b, rtol=1e-4, atol=1e-6):
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_cross_entropy_equals_full_logits(dtype):
    g = torch.Generator().manual_seed(1)
    n, h, v = 203, 24, 997  # chunk does not divide n; ignored targets included
    x = torch.randn(n, h, generator=g, dtype=dtype, requires_grad=True)
    w = (torch.randn(v, h, generator=g, dtype=dtype) * 0.3).requires_grad_()
    b = torch.randn(v, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    y[[0, 7, 150]] = -100
    ours = linear_cross_entropy(x, w, b, y, chunk=64)
    gours = torch.autograd.grad(ours * 2.5, (x, w, b))  # a non-unit upstream gradient
    ref = F.cross_entropy((x @ w.t() + b).to(torch.promote_types(dtype, torch.float32)), y)
    gref = torch.autograd.grad(ref * 2.5, (x, w, b))
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == torch.float64 else {}
    torch.testing.assert_close(ours, ref.to(ours.dtype), **tol)
    for a, r in zip(gours, gref, strict=True):
        torch.testing.assert_close(a, r, **tol)
    with torch.no_grad():  # evaluation: no gradient buffers, same value
        torch.testing.assert_close(linear_cross_entropy(x, w, b, y, chunk=50), ours.detach())
    assert chunk_tokens(10_000, 51_200) * 51_200 <= 1 << 25


def test_fused_loss_equals_hf_logits_loss_values_and_gradients():
    mc = ModelConfig(**_M)
    w = _batch()
    plain, fused = build_model(mc, seed=3), build_train_model(mc, seed=3)
    assert plain.state_dict().keys() == fused.state_dict().keys()
    lp, lf = _plain_loss(plain, w), fused(input_ids=w[:, :-1], labels=w[:, 1:])
    lp.backward()
    lf.backward()
    torch.testing.assert_close(lf, lp)
    _assert_grads_close(_grads(fused), _grads(plain))


def test_gelu_pytorch_tanh_equals_gelu_new():
    w = _batch(seed=2)
    new = build_model(ModelConfig(**_M), seed=5)
    old = build_model(ModelConfig(**_M, activation="gelu_new"), seed=5)
    assert new.config.hidden_act == "gelu_pytorch_tanh" and old.config.hidden_act == "gelu_new"
    ln, lo = _plain_loss(new, w), _plain_loss(old, w)
    ln.backward()
    lo.backward()
    torch.testing.assert_close(ln, lo, rtol=1e-6, atol=1e-6)
    _assert_grads_close(_grads(new), _grads(old))


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_checkpointing_changes_nothing_numerically(mode):
    mc = ModelConfig(**{**_M, "resid_dropout": 0.1, "attention_dropout": 0.1})
    w = _batch(seed=4)
    out = {}
    for m in ("none", mode):
        model = prepare_layers(build_train_model(mc, seed=7).train(), m)
        torch.manual_seed(11)  # the same dropout masks; the recompute must replay them
        loss = model(input_ids=w[:, :-1], labels=w[:, 1:])
        loss.backward()
        out[m] = (loss.detach(), _grads(model))
    torch.testing.assert_close(out[mode][0], out["none"][0])
    _assert_grads_close(out[mode][1], out["none"][1])


def test_export_of_trained_weights_loads_as_plain_phi(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    mc = ModelConfig(**_M)
    trained = build_train_model(mc, seed=9)
    plain = build_model(mc)
    plain.load_state_dict(trained.state_dict())  # same names: what export_hf does
    plain.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert cfg.architectures == ["PhiForCausalLM"] and cfg.hidden_act == "gelu_pytorch_tanh"
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    x = _batch(1, 16)[:, :-1]
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=x).logits, trained(input_ids=x).logits)


@pytest.mark.slow
def test_compiled_layers_equal_eager():
    mc = ModelConfig(**_M)
    w = _batch(seed=6)
    out = {}
    for compiled in (False, True):
        model = prepare_layers(build_train_model(mc, seed=8).train(), "none", compile=compiled)
        loss = model(input_ids=w[:, :-1], labels=w[:, 1:])
        loss.backward()
        out[compiled] = (loss.detach(), _grads(model))
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-5, atol=1e-5)
    _assert_grads_close(out[True][1], out[False][1], rtol=1e-3, atol=1e-5)
