"""What isolation this host can give, and whether a stage may accept it.

Modes, strongest first:

* ``strong``: root, with unshare(1). New network, PID and mount namespaces per worker
  slot; a minimal read-only filesystem view; fresh tmpfs ``/tmp``, ``/var/tmp``,
  ``/dev/shm`` per sample; the candidate and the judge each run as an unprivileged uid of
  their own; per-slot cgroups where they can be created.
* ``userns``: not root, unprivileged user namespaces. The same namespaces and view; the
  candidate enters a user namespace of its own (so it cannot undo the mounts), but the
  candidate, the judge and the evaluator share one host uid: forks are bounded only by
  that uid's shared RLIMIT_NPROC, memory by the server's RSS watchdog.
* ``none``: no namespaces. The candidate is confined by Landlock (ABI >= 6): it reads
  only the interpreter's trees, writes only its own temp dir, opens no TCP connection
  and signals nothing outside its sandbox. Needs a kernel with Landlock signal scoping;
  without it no mode is accepted at all.

``userns`` and ``none`` are *weak*: a stage refuses them, naming what is missing,
unless ``allow_weak_sandbox`` is set. ``PHI_RAY_SANDBOX_MODE`` forces a mode (tests).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from phi_ray.sandbox import jail

MODES = ("strong", "userns", "none")
ENV_FORCE = "PHI_RAY_SANDBOX_MODE"


class WeakSandboxError(RuntimeError):
    """This host cannot give the sandbox's full guarantees and weak mode was not allowed."""


@functools.lru_cache(maxsize=1)
def _userns_works() -> bool:
    return _unshare_runs("-r")


@functools.lru_cache(maxsize=1)
def _root_ns_works() -> bool:
    return os.geteuid() == 0 and _unshare_runs()


def _unshare_runs(*extra: str) -> bool:
    """Whether ``unshare`` can make network, PID and mount namespaces here (``-r``: as a
    mapped root in a new user namespace)."""
    if not shutil.which("unshare"):
        return False
    try:
        r = subprocess.run(
            ["unshare", *extra, "-n", "-p", "-f", "-m", "--", "true"],
            capture_output=True,
            timeout=20,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def missing(mode: str) -> list[str]:
    """What ``mode`` lacks compared with ``strong`` (empty for ``strong``)."""
    if mode == "strong":
        return []
    out = ["root (for a uid per candidate and judge, per-sample cgroups)"]
    if mode == "none":
        out.append("user namespaces (for private network, PID and mount namespaces)")
    return out


def detect() -> str:
    """The strongest mode this host supports (or the forced one)."""
    forced = os.environ.get(ENV_FORCE, "").strip()
    if forced:
        if forced not in MODES:
            raise ValueError(f"{ENV_FORCE}={forced!r}: use one of {', '.join(MODES)}")
        return forced
    if _root_ns_works():
        return "strong"
    if _userns_works():
        return "userns"
    return "none"


def choose(allow_weak: bool, mode: str | None = None) -> str:
    """The mode to run in, or WeakSandboxError naming what is missing."""
    mode = mode or detect()
    if mode == "none" and jail.landlock_abi() < 6:
        raise WeakSandboxError(
            "sandbox: no user namespaces and no Landlock signal scoping (kernel >= 6.12) on "
            "this host: nothing would stop a program from signalling the evaluator or "
            "reading its environment. Run as root, or where user namespaces are enabled."
        )
    if mode != "strong" and not allow_weak:
        raise WeakSandboxError(
            f"sandbox: only the weak '{mode}' mode is available here; missing: "
            f"{'; '.join(missing(mode))}. Run as root in a container (or with user "
            "namespaces), or set allow_weak_sandbox=true to accept the weaker guarantees "
            "(see README, Security)."
        )
    return mode
