"""Run generated code's doctest examples in :mod:`phi_ray.sandbox` (the one sandbox).

LLM-written code is hostile input: it runs as a sandbox *candidate* (no network, no host
files -- the run directory is not even in its view, so no planted ``model.joblib`` --,
a minimal read-only filesystem, bounded memory, forks and output), and the examples'
verdict is decided by the sandbox's judge, which parses the docstrings itself, sends each
example to the candidate and compares what comes back: the code cannot write a result
file or report a pass. One pool of fork servers per process (a Ray worker keeps its
own), per set of limits, started on first use.
"""

from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass

from phi_ray.sandbox import Doctest, Limits, Sandbox

# Statuses recorded per row. Only "passed" and "no_examples" count as runnable.
PASSED, FAILED, ERROR, TIMEOUT, NO_EXAMPLES, NOT_RUN = (
    "passed",
    "failed",
    "error",
    "timeout",
    "no_examples",
    "not_run",
)
_STATUSES = {PASSED, FAILED, ERROR, TIMEOUT, NO_EXAMPLES}


@dataclass(frozen=True)
class ExecResult:
    status: str
    attempted: int = 0
    failed: int = 0
    detail: str = ""


_pools: dict[tuple, Sandbox] = {}
_lock = threading.Lock()


def _pool(timeout_s: float, memory_mb: int, allow_weak: bool) -> Sandbox:
    key = (float(timeout_s), int(memory_mb), bool(allow_weak))
    with _lock:
        if key not in _pools:
            limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb, max_procs=16, max_file_mb=16)
            _pools[key] = Sandbox(limits, allow_weak=allow_weak)
        return _pools[key]


@atexit.register
def close_pools() -> None:
    """Stop every fork server this process started."""
    with _lock:
        for sb in _pools.values():
            sb.close()
        _pools.clear()


def run_examples(
    code: str,
    sessions: list[str] | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    allow_weak: bool = False,
) -> ExecResult:
    """Execute ``code`` as a module, then its doctests and any ``>>>`` session blocks.

    Raises :class:`~phi_ray.sandbox.WeakSandboxError` where the host cannot give the
    sandbox's guarantees and ``allow_weak`` is not set; any other failure is a row status.
    """
    if ">>>" not in code and not sessions:
        return ExecResult(NO_EXAMPLES)
    res = _pool(timeout_s, memory_mb, allow_weak).run_one(Doctest(code, tuple(sessions or ())))
    status = res.status if res.status in _STATUSES else ERROR
    detail = res.detail if status != TIMEOUT else f"killed after {timeout_s}s"
    return ExecResult(status, res.attempted, res.failed, detail)
