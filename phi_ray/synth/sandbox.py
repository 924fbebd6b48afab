"""Run generated code's doctest examples in a sandboxed subprocess.

Each run gets a fresh temporary directory as its cwd and HOME, a stripped environment,
an isolated interpreter (``python -I``), resource limits (address space, CPU seconds, file
size, open files), its own process group, and a wall-clock timeout after which the whole
group is killed. This is robustness against buggy model output (infinite loops, memory
blow-ups, stray files), not a security boundary against hostile code: use containers for that.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Statuses recorded per row. Only "passed" and "no_examples" count as runnable.
PASSED, FAILED, ERROR, TIMEOUT, NO_EXAMPLES, NOT_RUN = (
    "passed",
    "failed",
    "error",
    "timeout",
    "no_examples",
    "not_run",
)

_RUNNER = r"""
import doctest, io, json, sys, types
spec = json.load(open(sys.argv[1]))
res = {"attempted": 0, "failed": 0, "error": ""}
out = io.StringIO()
def finish():
    with open(sys.argv[2], "w") as f:
        json.dump(res, f)
mod = types.ModuleType("solution")
mod.__file__ = "solution.py"
sys.modules["solution"] = mod
real_stdout = sys.stdout
sys.stdout = out
try:
    exec(compile(spec["code"], "solution.py", "exec"), mod.__dict__)
except BaseException as e:
    res["error"] = f"{type(e).__name__}: {e}"[:500]
    finish(); sys.exit(0)
flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
runner = doctest.DocTestRunner(verbose=False, optionflags=flags)
tests = doctest.DocTestFinder(recurse=True).find(mod, "solution", globs=dict(mod.__dict__))
parser = doctest.DocTestParser()
for i, s in enumerate(spec["sessions"]):
    tests.append(parser.get_doctest(s, dict(mod.__dict__), f"session{i}", "solution.py", 0))
for t in tests:
    runner.run(t, out=out.write)
r = runner.summarize(verbose=False)
sys.stdout = real_stdout
res["attempted"], res["failed"] = r.attempted, r.failed
if r.failed:
    res["error"] = out.getvalue()[-500:]
finish()
"""


@dataclass(frozen=True)
class ExecResult:
    status: str
    attempted: int = 0
    failed: int = 0
    detail: str = ""


def _limits(memory_mb: int, cpu_s: int) -> None:
    """Runs in the child between fork and exec."""
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_examples(
    code: str,
    sessions: list[str] | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
) -> ExecResult:
    """Execute ``code`` as a module, then its doctests and any ``>>>`` session blocks."""
    if ">>>" not in code and not sessions:
        return ExecResult(NO_EXAMPLES)
    with tempfile.TemporaryDirectory(prefix="phi-ray-sandbox-") as tmp:
        spec, result = os.path.join(tmp, "spec.json"), os.path.join(tmp, "result.json")
        with open(spec, "w") as f:
            json.dump({"code": code, "sessions": sessions or []}, f)
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": tmp,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _RUNNER, spec, result],
            cwd=tmp,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # own process group: the kill reaches its children
            preexec_fn=lambda: _limits(memory_mb, int(timeout_s) + 1),
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return ExecResult(TIMEOUT, detail=f"killed after {timeout_s}s")
        finally:
            _kill_group(proc)  # stragglers the code may have forked
        try:
            with open(result) as f:
                r = json.load(f)
        except (OSError, json.JSONDecodeError):
            tail = (err or b"").decode(errors="replace")[-300:]
            return ExecResult(ERROR, detail=f"exit {proc.returncode}: {tail}")
    if r["error"] and not r["attempted"]:
        return ExecResult(ERROR, detail=r["error"])
    if r["attempted"] == 0:
        return ExecResult(NO_EXAMPLES)
    status = FAILED if r["failed"] else PASSED
    return ExecResult(status, r["attempted"], r["failed"], r["error"])
