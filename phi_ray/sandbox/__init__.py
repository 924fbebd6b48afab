"""One sandbox for every execution of untrusted code (evaluate's completions, synth's
LLM-written doctests).

The verdict is decided outside the untrusted process. Each job runs as two processes
forked by a per-slot server (:mod:`~phi_ray.sandbox.server`): the **candidate**
(:mod:`~phi_ray.sandbox.candidate`) loads the program under test and answers calls; the
**judge** (:mod:`~phi_ray.sandbox.judge`), another identity the candidate cannot reach,
holds the tests, sends the candidate arguments, compares the plain data it gets back
(:mod:`~phi_ray.sandbox.wire`), and writes the verdict on a pipe the candidate never
had. Isolation per mode is in :mod:`~phi_ray.sandbox.modes`; the kernel plumbing in
:mod:`~phi_ray.sandbox.jail` and :mod:`~phi_ray.sandbox.cgroups`; the pool in
:mod:`~phi_ray.sandbox.host`; jobs, limits and verdicts in :mod:`~phi_ray.sandbox.jobs`. The README's Security section says what each
mode guarantees.
"""

from phi_ray.sandbox.host import Sandbox, SandboxError
from phi_ray.sandbox.jobs import (
    Check,
    Doctest,
    ExecResult,
    Job,
    Limits,
    Script,
    check_limits,
    signal_name,
)
from phi_ray.sandbox.modes import WeakSandboxError, detect

__all__ = [
    "Check",
    "Doctest",
    "ExecResult",
    "Job",
    "Limits",
    "Sandbox",
    "SandboxError",
    "Script",
    "WeakSandboxError",
    "check_limits",
    "detect",
    "signal_name",
]
