"""`phi-ray estimate`: LLM tokens and dollars, GPU-hours and dollars, before running a preset.

LLM cost = requests x (input, output) tokens x the price table in ``llm.prices``.
Training GPU-hours = tokens x FLOPs per token / (peak x MFU), with FLOPs per token
= 6·N + 12·L·d·S (the weights' forward and backward, plus attention scores over a
sequence of S; PaLM's appendix B). Scoring GPU-hours = corpus tokens / measured
throughput. Every input is a config key under ``estimate`` (or the stage's own section).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from phi_ray.config import Config, TrainConfig
from phi_ray.runs import RunDir, StageResult


@dataclass
class Line:
    item: str
    detail: str
    tokens: float = 0.0
    gpu_hours: float = 0.0
    usd: float = 0.0


def _price(cfg: Config, model: str | None) -> tuple[str, dict[str, float]]:
    name = model or cfg.llm.model
    if name not in cfg.llm.prices:
        raise ValueError(f"no price for model {name!r} in llm.prices ({', '.join(cfg.llm.prices)})")
    return name, cfg.llm.prices[name]


def _llm_line(cfg: Config, item: str, model: str | None, n: int, tin: int, tout: int) -> Line:
    name, p = _price(cfg, model)
    usd = n * (tin * p["input"] + tout * p["output"]) / 1e6
    return Line(
        item, f"{n:,} requests x ({tin} in + {tout} out) tokens, {name}", n * (tin + tout), 0.0, usd
    )


def model_parameters(cfg: Config) -> int:
    """Exact parameter count of the preset's PhiForCausalLM (built on the meta device)."""
    import torch
    from transformers import PhiForCausalLM

    from phi_ray.model.phi import phi_config

    with torch.device("meta"):
        model = PhiForCausalLM(phi_config(cfg.model))
    return sum(p.numel() for p in model.parameters())


def _train_line(cfg: Config, item: str, t: TrainConfig, n_params: int) -> Line:
    seq = cfg.pack.seq_len
    tokens = t.max_steps * t.global_batch * seq
    flops_per_token = 6 * n_params + 12 * cfg.model.n_layer * cfg.model.hidden_size * seq
    e = cfg.estimate
    hours = tokens * flops_per_token / (e.gpu_peak_tflops * 1e12 * e.assumed_mfu) / 3600
    detail = (
        f"{t.max_steps:,} steps x {t.global_batch} x {seq} tokens, {n_params / 1e9:.2f}B params"
    )
    return Line(item, detail, tokens, hours, hours * e.gpu_hour_usd)


def estimate(cfg: Config, corpus_tokens: float | None = None) -> list[Line]:
    """The cost lines of a preset; ``corpus_tokens`` overrides the configured corpus size."""
    e = cfg.estimate
    lines = []
    llm_on = cfg.llm.base_url is not None or cfg.annotate.judge == "llm"
    if cfg.annotate.judge == "llm" or (cfg.annotate.judge == "auto" and llm_on):
        lines.append(
            _llm_line(
                cfg,
                "annotate",
                cfg.annotate.model,
                cfg.annotate.sample_size,
                e.annotate_input_tokens,
                e.annotate_output_tokens,
            )
        )
    synth_llm = cfg.synth.source == "llm" or (cfg.synth.source == "auto" and llm_on)
    if synth_llm and "textbooks" in cfg.synth.kinds:
        lines.append(
            _llm_line(
                cfg,
                "synth textbooks",
                cfg.synth.model,
                cfg.synth.n_textbooks,
                e.textbook_input_tokens,
                e.textbook_output_tokens,
            )
        )
    if synth_llm and "exercises" in cfg.synth.kinds:
        lines.append(
            _llm_line(
                cfg,
                "synth exercises",
                cfg.synth.model,
                cfg.synth.n_exercises,
                e.exercise_input_tokens,
                e.exercise_output_tokens,
            )
        )
    tokens = corpus_tokens if corpus_tokens is not None else e.corpus_tokens
    hours = tokens / e.scoring_tokens_per_gpu_hour
    lines.append(
        Line(
            "score",
            f"{tokens:,.0f} corpus tokens at {e.scoring_tokens_per_gpu_hour:,.0f}/GPU-hour",
            tokens,
            hours,
            hours * e.gpu_hour_usd,
        )
    )
    n_params = model_parameters(cfg)
    lines.append(_train_line(cfg, "pretrain", cfg.pretrain, n_params))
    lines.append(_train_line(cfg, "finetune", cfg.finetune, n_params))
    return lines


def measured_corpus_tokens(run: RunDir) -> int | None:
    """The corpus tokens a finished ingest stage counted; they win over the configured size."""
    return ((run.read_success("ingest") or {}).get("counts") or {}).get("tokens_out")


def basis(cfg: Config) -> str:
    """The prices and efficiency behind every GPU line, as one phrase."""
    e = cfg.estimate
    return f"${e.gpu_hour_usd}/GPU-hour, MFU {e.assumed_mfu:.0%} of {e.gpu_peak_tflops:.0f} TFLOP/s"


def format_table(lines: list[Line], cfg: Config) -> str:
    rows = [f"{'item':<16} {'tokens':>14} {'GPU-hours':>10} {'USD':>11}  detail"]
    for ln in lines:
        rows.append(
            f"{ln.item:<16} {ln.tokens:>14,.0f} {ln.gpu_hours:>10,.1f} {ln.usd:>11,.2f}  {ln.detail}"
        )
    llm = sum(ln.usd for ln in lines if ln.gpu_hours == 0)
    gpu = sum(ln.usd for ln in lines if ln.gpu_hours > 0)
    hours = sum(ln.gpu_hours for ln in lines)
    rows.append(
        f"{'total':<16} {'':>14} {hours:>10,.1f} {llm + gpu:>11,.2f}  "
        f"LLM ${llm:,.2f} + GPU ${gpu:,.2f} ({basis(cfg)})"
    )
    return "\n".join(rows)


def run(cfg: Config, run: RunDir) -> StageResult:
    """Print the estimate and write ``<run>/estimate.json``."""
    measured = measured_corpus_tokens(run)
    lines = estimate(cfg, float(measured) if measured else None)
    print(format_table(lines, cfg))
    if not any(ln.gpu_hours == 0 for ln in lines):
        print(
            "(no LLM lines: with llm.base_url unset, annotate and synth run their offline "
            "fallbacks; add --set llm.base_url=URL to price the paper's LLM stages)"
        )
    if measured:
        print(f"(corpus tokens from this run's ingest stage: {measured:,})")
    path = run.path("estimate.json")
    run.write_json(
        path,
        {
            "preset": cfg.preset,
            "lines": [vars(ln) for ln in lines],
            "total_usd": sum(ln.usd for ln in lines),
            "gpu_hours": sum(ln.gpu_hours for ln in lines),
        },
    )
    return StageResult(
        "estimate", os.fspath(path), False, {"total_usd": sum(ln.usd for ln in lines)}
    )
