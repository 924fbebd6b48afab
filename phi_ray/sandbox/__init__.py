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

import importlib

# Names resolve on first use (PEP 562): the fork server imports this package's small
# modules (wire, jail, judge, candidate) without pulling in the host side, so every
# process it forks is smaller to copy and to tear down.
_WHERE = {
    "Sandbox": "host",
    "SandboxError": "host",
    "Check": "jobs",
    "Doctest": "jobs",
    "ExecResult": "jobs",
    "Job": "jobs",
    "Limits": "jobs",
    "Script": "jobs",
    "check_limits": "jobs",
    "signal_name": "jobs",
    "WeakSandboxError": "modes",
    "detect": "modes",
}


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module 'phi_ray.sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(f"phi_ray.sandbox.{_WHERE[name]}"), name)


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
