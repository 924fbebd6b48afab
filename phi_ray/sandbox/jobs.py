"""What the sandbox runs and what it answers: limits, jobs, results, and the verdict.

:func:`verdict` turns a server's answer into an :class:`ExecResult`. It trusts only the
judge's frame, and only when the judge exited cleanly after sending it. The candidate's
wait status and the cgroup's OOM counter only explain a failure; they never make a pass.
Anything malformed is a failed sample with a reason.
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sample; validated so a bad value fails here, not in every
    sample (an ``inf`` or 10**13 would overflow setrlimit and fail each run silently)."""

    timeout_s: float = 10.0  # wall clock of the whole sample
    memory_mb: int = 1024  # the sample as a whole (cgroup), and each process (RLIMIT_AS)
    max_procs: int = 32  # processes + threads of the sample
    max_file_mb: int = 16  # largest file a program may write; also each tmpfs's size

    def __post_init__(self) -> None:
        check_limits(self.timeout_s, self.memory_mb, self.max_procs, self.max_file_mb)

    @property
    def cpu_s(self) -> int:
        return int(self.timeout_s) + 1


def check_limits(timeout_s: float, memory_mb: int, max_procs: int, max_file_mb: int) -> None:
    """ValueError naming the first limit out of range."""
    if not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s):
        raise ValueError(f"timeout_s={timeout_s!r}: must be a finite number of seconds")
    if not 0 < timeout_s <= 86_400:
        raise ValueError(f"timeout_s={timeout_s!r}: must be in (0, 86400]")
    for name, v, lo, hi in (
        ("memory_mb", memory_mb, 64, 1 << 22),
        ("max_procs", max_procs, 1, 1 << 16),
        ("max_file_mb", max_file_mb, 1, 1 << 20),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{name}={v!r}: must be an integer in [{lo}, {hi}]")


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Check:
    """A HumanEval-format sample: the judge runs ``test`` and ``check(entry_point)``."""

    prompt: str
    completion: str
    test: str
    entry_point: str

    def payloads(self) -> tuple[dict, dict]:
        cand = {"code": self.prompt + self.completion, "filename": "<sample>", "module": False}
        judge = {
            "kind": "check",
            "prompt": self.prompt,
            "test": self.test,
            "entry_point": self.entry_point,
        }
        return cand, judge


@dataclass(frozen=True)
class Doctest:
    """Code whose docstring examples (and ``>>>`` sessions) are checked by the judge."""

    code: str
    sessions: tuple[str, ...] = ()

    def payloads(self) -> tuple[dict, dict]:
        cand = {"code": self.code, "filename": "solution.py", "module": True}
        return cand, {"kind": "doctest", "code": self.code, "sessions": list(self.sessions)}


@dataclass(frozen=True)
class Script:
    """A self-checking program, passed iff it runs to its end. NOT forgery-proof (the
    verdict comes from the program's own process): for trusted programs only."""

    program: str

    def payloads(self) -> tuple[dict, dict]:
        return {"code": self.program, "filename": "<sample>", "module": False}, {"kind": "script"}


Job = Check | Doctest | Script


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    result: str  # "passed", "timed out" or "failed: ..."
    duration_s: float
    status: str = ""  # doctest jobs: passed / failed / error / timeout / no_examples
    attempted: int = 0
    failed: int = 0
    detail: str = ""


def failed(job: Job, why: str, dt: float, status: str = "error") -> ExecResult:
    return ExecResult(False, why, dt, status=status if isinstance(job, Doctest) else "", detail=why)


def signal_name(num: int) -> str:
    """``SIGKILL``, or ``signal 40`` for numbers the signal module has no name for."""
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _why_dead(ans: dict, said: str = "") -> str:
    """Why the candidate stopped, from its wait status (the only thing it cannot fake
    about itself), the cgroup's OOM counter, else what the judge saw."""
    if ans.get("stop") == "memory" or ans.get("oom"):
        return "killed (memory limit of the sample)"
    st = ans.get("cand_status")
    if not isinstance(st, int):
        return said.removeprefix("failed: ") or "the program stopped answering"
    if os.WIFSIGNALED(st):
        name = signal_name(os.WTERMSIG(st))
        hint = {"SIGXCPU": " (cpu time limit)", "SIGKILL": " (cpu or memory limit)"}.get(name, "")
        return f"killed by {name}{hint}"
    if os.WIFEXITED(st):
        return f"exited with code {os.WEXITSTATUS(st)} before its tests finished"
    return "the program stopped answering"


def verdict(ans: dict, job: Job) -> ExecResult:
    """The judge's verdict, trusted only when the judge exited cleanly after sending it."""
    dt = float(ans.get("duration_s") or 0.0)
    if ans.get("stop") == "timeout":
        return failed(job, "timed out", dt, "timeout")
    if ans.get("stop") == "memory":
        return failed(job, f"failed: {_why_dead(ans)}", dt)
    v, st = ans.get("verdict"), ans.get("judge_status")
    if not isinstance(v, dict) or not (
        isinstance(st, int) and os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0
    ):
        why = (
            f"judge stopped ({signal_name(os.WTERMSIG(st))})"
            if isinstance(st, int) and os.WIFSIGNALED(st)
            else "no verdict from the judge"
        )
        return failed(job, f"failed: sandbox error ({why})", dt)
    if v.get("gone"):
        return failed(job, f"failed: {_why_dead(ans, str(v.get('result', '')))}"[:500], dt)
    if isinstance(job, Doctest):
        status = str(v.get("status", "error"))
        return ExecResult(
            status == "passed",
            status,
            dt,
            status=status,
            attempted=int(v.get("attempted", 0)),
            failed=int(v.get("failed", 0)),
            detail=str(v.get("detail", ""))[:500],
        )
    passed = v.get("passed") is True and v.get("result") == "passed"
    result = "passed" if passed else str(v.get("result", "failed"))[:500]
    return ExecResult(passed, result, dt)
