"""phi-1 as ``transformers.PhiForCausalLM``, built from a :class:`~phi_ray.config.ModelConfig`.

``PhiConfig()``'s defaults are phi-1 itself (24 layers, hidden 2048, MLP 8192, 32 heads,
partial rotary 0.5, vocab 51200, parallel attention + MLP), so checkpoints saved here load
with anything that loads microsoft/phi-1.

The activation is ``gelu_pytorch_tanh``: phi-1's ``gelu_new`` (the tanh approximation of
GELU) computed by one ``F.gelu(approximate="tanh")`` kernel instead of a Python formula that
saves ~5 intermediate tensors per MLP for backward. Same function (equal to within float
rounding), and a name transformers, vLLM and llama.cpp all read, so exports still load as
phi-1. ``ModelConfig.activation: gelu_new`` restores the original for comparison.

Training adds three things to the plain model, none of which changes its weights' names:
:class:`PhiForTraining` returns the next-token loss straight from the hidden states
(:func:`phi_ray.model.loss.linear_cross_entropy`, no full-vocab logits); and
:func:`prepare_layers` puts activation checkpointing and ``torch.compile`` on each decoder
layer.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from transformers import PhiConfig, PhiForCausalLM

from phi_ray.config import ModelConfig
from phi_ray.model.tokenizer import EOS_ID
from phi_ray.runtime import flash_attn_available


def attn_implementation(mcfg: ModelConfig, device: str = "cpu") -> str:
    """``flash_attention_2`` where CUDA and flash-attn are present, else ``sdpa``."""
    if mcfg.attn_implementation != "auto":
        return mcfg.attn_implementation
    if device.startswith("cuda") and flash_attn_available():
        return "flash_attention_2"
    return "sdpa"


def phi_config(mcfg: ModelConfig, device: str = "cpu") -> PhiConfig:
    head_dim = mcfg.hidden_size // mcfg.n_head
    cfg = PhiConfig(
        vocab_size=mcfg.vocab_size,
        hidden_size=mcfg.hidden_size,
        intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.n_layer,
        num_attention_heads=mcfg.n_head,
        max_position_embeddings=mcfg.max_position_embeddings,
        resid_pdrop=mcfg.resid_dropout,
        embd_pdrop=mcfg.embd_dropout,
        attention_dropout=mcfg.attention_dropout,
        partial_rotary_factor=mcfg.rotary_dim / head_dim,
        hidden_act=mcfg.activation,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    cfg._attn_implementation = attn_implementation(mcfg, device)
    return cfg


def build_model(mcfg: ModelConfig, device: str = "cpu", seed: int | None = None) -> PhiForCausalLM:
    """A freshly initialised PhiForCausalLM (deterministic when ``seed`` is given)."""
    return _build(PhiForCausalLM, mcfg, device, seed)


def build_train_model(
    mcfg: ModelConfig, device: str = "cpu", seed: int | None = None
) -> PhiForTraining:
    """:func:`build_model`'s model (same init, same weight names) with the fused loss."""
    return _build(PhiForTraining, mcfg, device, seed)


def _build(cls, mcfg: ModelConfig, device: str, seed: int | None):
    if seed is not None:
        torch.manual_seed(seed)
    cfg = phi_config(mcfg, device)
    return cls._from_config(cfg, attn_implementation=cfg._attn_implementation)


class PhiForTraining(PhiForCausalLM):
    """PhiForCausalLM whose ``forward(input_ids, labels=...)`` returns only the mean loss.

    The loss goes through :func:`~phi_ray.model.loss.linear_cross_entropy` from the final
    hidden states, so neither the (B, T, V) logits nor their fp32 copy ever exist. Without
    ``labels`` it is the plain model (generation, logits). A subclass rather than a wrapper
    so that DDP/FSDP wrap it directly and the weights keep PhiForCausalLM's names: training
    checkpoints load into the plain class, and the export is a plain PhiForCausalLM.
    """

    def forward(self, input_ids=None, labels=None, **kwargs):  # type: ignore[override]
        if labels is None:
            return super().forward(input_ids=input_ids, **kwargs)
        from phi_ray.model.loss import linear_cross_entropy

        kwargs.setdefault("use_cache", False)  # training: no KV cache to build per layer
        h = self.model(input_ids=input_ids, **kwargs).last_hidden_state  # (B, T, H)
        return linear_cross_entropy(h, self.lm_head.weight, self.lm_head.bias, labels)


def _sac_policy():
    """Selective checkpointing: keep matmul and attention outputs, recompute the rest.

    What a decoder layer saves then is its input, q/k/v, the attention output and the three
    other projections' outputs; LayerNorm, rotary, GELU and dropout are recomputed in
    backward (elementwise, a few % of the layer's time). No matmul is ever recomputed.
    """
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    save = {aten.mm.default, aten.addmm.default, aten.bmm.default}
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    ):
        if hasattr(aten, name):
            save.add(getattr(aten, name).default)

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return partial(create_selective_checkpoint_contexts, policy)


def prepare_layers(model: PhiForCausalLM, checkpointing: str = "none", compile: bool = False):
    """Activation checkpointing (``none|selective|full``) and ``torch.compile`` per layer.

    Neither renames a parameter (checkpoints, FSDP sharding and the export do not see them).
    Checkpointing goes through transformers' own per-layer hook (non-reentrant, with the
    selective policy as its ``context_fn``); compile is ``nn.Module.compile`` on each layer,
    so it runs inside the checkpoint and the recompute replays the compiled layer. Per layer
    rather than whole-model: the identical layers compile once, and graph breaks outside
    them (the mask building) do not matter.
    """
    if checkpointing != "none":
        kw: dict[str, Any] = {"use_reentrant": False}
        if checkpointing == "selective":
            kw["context_fn"] = _sac_policy()
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    if compile:
        for layer in model.model.layers:
            layer.compile()
    return model
