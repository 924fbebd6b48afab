"""phi-1 as ``transformers.PhiForCausalLM``, built from a :class:`~phi_ray.config.ModelConfig`.

``PhiConfig()``'s defaults are phi-1 itself (24 layers, hidden 2048, MLP 8192, 32 heads,
partial rotary 0.5, vocab 51200, parallel attention + MLP), so checkpoints saved here load
with anything that loads microsoft/phi-1.
"""

from __future__ import annotations

from typing import Any

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
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
    )
    cfg._attn_implementation = attn_implementation(mcfg, device)
    return cfg


def build_model(mcfg: ModelConfig, device: str = "cpu", seed: int | None = None) -> PhiForCausalLM:
    """A freshly initialised PhiForCausalLM (deterministic when ``seed`` is given)."""
    import torch

    if seed is not None:
        torch.manual_seed(seed)
    cfg = phi_config(mcfg, device)
    return PhiForCausalLM._from_config(cfg, attn_implementation=cfg._attn_implementation)


def count_parameters(model: Any, non_embedding: bool = False) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.get_input_embeddings().weight.numel()
    return n
