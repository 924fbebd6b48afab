"""What each arm's model is measured on.

- Solution loss: the mean per-token loss of a benchmark's canonical solutions given their
  prompts, on the solution's tokens only. It moves long before pass@k does (a tiny model
  passes no HumanEval problem but assigns the solutions very different likelihoods).
- Held-out loss: the mean per-token loss on the held-out windows of the corpus, the same for
  every arm, so an arm is not credited merely for matching HumanEval's style.
- pass@k: through the evaluate stage's own generation, sandbox and pass@k functions.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from phi_ray.evaluate.problems import Problem


def window(n_prompt: int, n_total: int, max_len: int) -> tuple[int, int]:
    """The [start, end) slice of prompt + solution that fits ``max_len`` positions.

    The last ``max_len`` tokens, unless that would start inside the solution: then the slice
    starts at the prompt's last token (the solution's head keeps a token of context and its
    tail is dropped). Targets scored: positions ``max(n_prompt, start + 1) .. end - 1``.
    """
    if n_total <= max_len:
        return 0, n_total
    start = min(n_total - max_len, max(n_prompt - 1, 0))
    return start, start + max_len


def encode_pairs(tok: Any, problems: list[Problem]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids) per problem, tokenized apart so that the solution's tokens
    are exactly its own, whatever the prompt's last characters are."""
    out = []
    for p in problems:
        if not p.canonical_solution:
            continue
        pi = tok(p.prompt, add_special_tokens=False)["input_ids"]
        si = tok(p.canonical_solution, add_special_tokens=False)["input_ids"]
        if si:
            out.append((list(pi), list(si)))
    return out


def solution_loss(
    model: Any, pairs: list[tuple[list[int], list[int]]], max_len: int, batch_size: int = 8
) -> dict[str, Any]:
    """Token-weighted mean NLL (nats) of the solution tokens, and the per-problem means."""
    import torch

    device = next(model.parameters()).device
    rows = []
    for p, s in pairs:
        ids = p + s
        start, end = window(len(p), len(ids), max_len)
        first = max(len(p), start + 1) - start  # first target position inside the slice
        rows.append((ids[start:end], first))
    total, count, per = 0.0, 0, []
    model.eval()
    for b in range(0, len(rows), batch_size):
        chunk = rows[b : b + batch_size]
        width = max(len(r[0]) for r in chunk)
        x = torch.zeros((len(chunk), width), dtype=torch.long)
        att = torch.zeros_like(x)
        for k, (ids, _) in enumerate(chunk):
            x[k, : len(ids)] = torch.tensor(ids)
            att[k, : len(ids)] = 1
        with torch.no_grad():
            logits = model(input_ids=x.to(device), attention_mask=att.to(device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, T, V)
        for k, (ids, first) in enumerate(chunk):
            tgt = torch.tensor(ids[first:])  # token t is predicted at position t - 1
            nll = -logp[k, first - 1 : len(ids) - 1].gather(1, tgt[:, None]).squeeze(1)
            total += float(nll.sum())
            count += int(nll.numel())
            per.append(float(nll.mean()))
    return {
        "loss": total / count if count else float("nan"),
        "problem_mean_loss": float(np.mean(per)) if per else float("nan"),
        "tokens": count,
        "problems": len(per),
    }


def heldout_loss(model: Any, windows: np.ndarray, batch_size: int = 8) -> dict[str, Any]:
    """Mean per-token NLL over held-out windows (n, T+1): inputs ``[:, :-1]``, targets
    ``[:, 1:]``; every window has T targets, so the mean of means is the token mean."""
    import torch

    device = next(model.parameters()).device
    model.eval()
    total, n = 0.0, 0
    for b in range(0, len(windows), batch_size):
        w = torch.as_tensor(np.asarray(windows[b : b + batch_size], dtype=np.int64))
        with torch.no_grad():
            logits = model(input_ids=w[:, :-1].to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1).to(device), reduction="sum"
        )
        total += float(nll)
        n += int(w[:, 1:].numel())
    return {"loss": total / n if n else float("nan"), "tokens": n, "windows": len(windows)}


def pass_at_k(model_dir: str, problems: list[Problem], ecfg: Any, seed: int) -> dict[str, Any]:
    """Generate, execute sandboxed and summarise, with the evaluate stage's functions."""
    from phi_ray.evaluate.execute import execute_samples, sandbox_from_config, summarize
    from phi_ray.evaluate.generate import ResumeLog, generate_hf

    t0 = time.perf_counter()
    done = generate_hf(model_dir, problems, ecfg, seed, ResumeLog(None))
    samples = [
        {"task_id": p.task_id, "sample": i, "completion": done[(p.task_id, i)]["completion"]}
        for p in problems
        for i in range(ecfg.n_samples)
    ]
    gen_s = time.perf_counter() - t0
    with sandbox_from_config(ecfg) as sandbox:
        rows, wall = execute_samples(problems, samples, sandbox)
    ks = [k for k in ecfg.ks if k <= ecfg.n_samples] or [1]
    out = summarize(rows, ks, wall)
    out["gen_wall_s"] = round(gen_s, 3)
    return out


def benchmarks(cfg: Any) -> dict[str, list[Problem]]:
    """HumanEval, and MBPP when a local file is configured (no hub access at eval time)."""
    from phi_ray.evaluate.problems import load_humaneval, load_mbpp

    out = {"humaneval": load_humaneval()}
    if cfg.evaluate.mbpp_path:
        out["mbpp"] = load_mbpp(cfg.evaluate.mbpp_path, cfg.evaluate.mbpp_split)
    return out


def passk_config(cfg: Any) -> Any:
    """The evaluate section with the ablation's problem limit."""
    limit = cfg.ablate.passk_limit or cfg.evaluate.limit
    return dataclasses.replace(cfg.evaluate, limit=limit)


__all__ = [
    "benchmarks",
    "encode_pairs",
    "heldout_loss",
    "pass_at_k",
    "passk_config",
    "solution_loss",
    "window",
]
