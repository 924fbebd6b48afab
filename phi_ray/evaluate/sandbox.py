"""evaluate's view of :mod:`phi_ray.sandbox` (the one sandbox for untrusted code).

Kept for the names evaluate's callers use (``Sandbox(limits, parallel, isolation=...)``,
``sandbox.iso.mode``, :func:`probe_isolation`); everything runs in :mod:`phi_ray.sandbox`,
where the verdict is decided by a judge process outside the program under test.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from phi_ray import sandbox as _sb
from phi_ray.sandbox import Check, ExecResult, Limits, SandboxError, WeakSandboxError

__all__ = [
    "Check",
    "ExecResult",
    "Isolation",
    "Limits",
    "Sandbox",
    "SandboxError",
    "WeakSandboxError",
    "probe_isolation",
]


@dataclass(frozen=True)
class Isolation:
    """The sandbox mode this host gives (``strong``, ``userns`` or ``none``)."""

    mode: str
    python: str


def probe_isolation(uid_base: int = 1_500_000_000, python: str | None = None) -> Isolation:
    """The strongest mode this machine allows (``PHI_RAY_SANDBOX_MODE`` forces one)."""
    return Isolation(_sb.detect(), os.path.realpath(python or sys.executable))


class Sandbox(_sb.Sandbox):
    """:class:`phi_ray.sandbox.Sandbox` with evaluate's positional arguments."""

    def __init__(
        self,
        limits: Limits | None = None,
        parallel: int = 0,
        uid_base: int = 1_500_000_000,
        isolation: Isolation | None = None,
        allow_weak: bool = False,
    ) -> None:
        super().__init__(
            limits or Limits(),
            parallel,
            mode=isolation.mode if isolation else None,
            allow_weak=allow_weak,
            uid_base=uid_base,
            python=isolation.python if isolation else None,
        )

    @property
    def iso(self) -> Isolation:
        return Isolation(str(self.mode), str(self.python))
