"""Training checkpoints (exact resume) and the Hugging Face export.

A checkpoint directory, as reported through ``ray.train.report(checkpoint=...)`` (Ray Train
merges every worker's directory into one):

- ``model.pt``, ``optim.pt``  (rank 0): full, unsharded state dicts, so a run may resume on
  another number of workers or switch between DDP and FSDP;
- ``trainer.pt``  (rank 0): step, scheduler, grad scaler, best validation loss so far;
- ``rng-rank<r>.pt``  (every rank): Python, NumPy, torch CPU and CUDA RNG states;
- ``best_model.pt``  (rank 0, when ``keep_best``): weights of the best validation step.

The data position is the step itself: batches are a pure function of (seed, step), see
:mod:`phi_ray.train.data`.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU weights (collective under FSDP: every rank must call it)."""
    return get_model_state_dict(model, options=_FULL)


def rng_state() -> dict[str, Any]:
    out = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])


def save(
    path: str,
    rank: int,
    model: torch.nn.Module,
    optim: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    best: dict[str, torch.Tensor] | None,
) -> None:
    """Write this rank's part of a checkpoint into ``path`` (collective: call on every rank)."""
    weights = full_model_state(model)
    opt = get_optimizer_state_dict(model, optim, options=_FULL)
    torch.save(rng_state(), os.path.join(path, f"rng-rank{rank}.pt"))
    if rank != 0:
        return
    torch.save(weights, os.path.join(path, "model.pt"))
    torch.save(opt, os.path.join(path, "optim.pt"))
    torch.save(trainer_state, os.path.join(path, "trainer.pt"))
    if best is not None:
        torch.save(best, os.path.join(path, "best_model.pt"))


def load(
    path: str, rank: int, model: torch.nn.Module, optim: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore model, optimizer and this rank's RNG; returns (trainer state, best weights)."""
    opts = StateDictOptions(full_state_dict=True)
    weights = torch.load(os.path.join(path, "model.pt"), map_location="cpu", weights_only=True)
    set_model_state_dict(model, weights, options=opts)
    opt = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optim, opt, options=opts)
    trainer_state = torch.load(os.path.join(path, "trainer.pt"), weights_only=False)
    rng = os.path.join(path, f"rng-rank{rank}.pt")
    if os.path.exists(rng):  # absent when resuming on more workers than before
        set_rng_state(torch.load(rng, weights_only=False))
    best_path = os.path.join(path, "best_model.pt")
    best = (
        torch.load(best_path, map_location="cpu", weights_only=True)
        if rank == 0 and os.path.exists(best_path)
        else None
    )
    return trainer_state, best


def export_hf(
    weights: dict[str, torch.Tensor], model_cfg: Any, out_dir: str, tokenizer: str | None = None
) -> str:
    """Save ``weights`` as a Hugging Face model dir (safetensors + config + tokenizer).

    The directory loads the way microsoft/phi-1 does: in transformers 4.x and 5.x (see
    :func:`phi_ray.model.tokenizer.save_tokenizer` and :func:`phi1_compatible_config`) and
    in vLLM.
    """
    from phi_ray.model.phi import build_model
    from phi_ray.model.tokenizer import get_tokenizer, save_tokenizer

    model = build_model(model_cfg, "cpu")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Phi ties nothing; only non-persistent buffers (rotary inv_freq) may be absent.
    bad = [k for k in missing if "rotary_emb" not in k] + list(unexpected)
    if bad:
        raise ValueError(f"export: checkpoint does not match model config: {bad[:5]}")
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    path = os.path.join(out_dir, "config.json")
    with open(path, encoding="utf-8") as f:
        config = phi1_compatible_config(json.load(f))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    save_tokenizer(get_tokenizer(tokenizer), out_dir)
    return out_dir


def phi1_compatible_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved Phi ``config.json`` that every Phi loader reads the same way.

    transformers 5 nests the rotary settings in ``rope_parameters``; 4.x reads only the
    top-level ``partial_rotary_factor`` / ``rope_theta`` (as microsoft/phi-1's config has
    them) and would silently fall back to its defaults. vLLM's Phi MLP is sized by
    ``n_inner`` (else ``4 * hidden_size``) and never reads ``intermediate_size``, so a model
    whose MLP is not 4x wide would fail to load there without ``n_inner``. ``torch_dtype``
    is the pre-4.56 name of ``dtype``. Both spellings of every key are written, equal.
    """
    out = dict(config)
    rope = dict(out.get("rope_parameters") or {})
    for key, default in (("partial_rotary_factor", 0.5), ("rope_theta", 10000.0)):
        value = rope.get(key, out.get(key, default))
        if key in out and out[key] != value:
            raise ValueError(f"config.json: {key}={out[key]} disagrees with rope_parameters")
        rope[key] = out[key] = value
    rope.setdefault("rope_type", "default")
    out["rope_parameters"] = rope
    if out.get("n_inner") not in (None, out["intermediate_size"]):
        raise ValueError("config.json: n_inner disagrees with intermediate_size")
    out["n_inner"] = out["intermediate_size"]
    if "dtype" in out or "torch_dtype" in out:
        out["dtype"] = out["torch_dtype"] = out.get("dtype") or out["torch_dtype"]
    return out


def load_hf_weights(path: str) -> dict[str, torch.Tensor]:
    """Weights of an exported (or any Phi) Hugging Face model dir, for ``init_from``."""
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return src.state_dict()
