"""Per-slot cgroups: the memory and process limits of a sample *as a whole*.

RLIMIT_AS bounds one process; a sample that forks holds a multiple of it. Where this
process may create cgroups (root, with a writable v2 hierarchy that delegates ``memory``
and ``pids``, or v1 ``memory`` and ``pids`` hierarchies), every slot gets one, as a child
of our own cgroup: ``memory.max`` (v1: ``memory.limit_in_bytes``, swap included) and
``pids.max`` apply to the candidate and everything it starts, together; tmpfs pages a
sample writes are charged to it too. The server joins each candidate to its slot's cgroup
and reads the OOM-kill counter to name a memory kill. Where no cgroup can be made, the
server's RSS watchdog stands in (see the package docstring and the README).
"""

from __future__ import annotations

import contextlib
import os
import time

ROOT = "/sys/fs/cgroup"


def _own_path(controller: str | None) -> str | None:
    """Our cgroup's path in the hierarchy of ``controller`` (None: the v2 hierarchy)."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if (controller is None and ctrls == "") or (controller in ctrls.split(",")):
            return path
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class SlotCgroups:
    """Cgroup directories for ``n`` slots; ``dirs[i]`` lists slot i's directories (v2:
    one; v1: memory and pids). Empty lists where cgroups are unavailable."""

    def __init__(
        self, n: int, memory_b: int, max_procs: int, tag: str, enabled: bool = True
    ) -> None:
        self.version, self.bases, self.dirs = 0, [], [[] for _ in range(n)]
        if os.geteuid() != 0 or not enabled:
            return
        for make in (self._v2, self._v1):
            try:
                if make(n, memory_b, max_procs, tag):
                    return
            except OSError:
                self.close()
            self.version, self.bases, self.dirs = 0, [], [[] for _ in range(n)]

    def _v2(self, n: int, memory_b: int, max_procs: int, tag: str) -> bool:
        own = _own_path(None)
        mnt = next(
            (m for m in (ROOT, f"{ROOT}/unified") if os.path.exists(f"{m}/cgroup.procs")), None
        )
        if own is None or mnt is None:
            return False
        parent = os.path.join(mnt + own, tag)
        with open(os.path.join(mnt + own, "cgroup.controllers")) as f:
            if not {"memory", "pids"} <= set(f.read().split()):
                return False
        os.mkdir(parent)
        self.bases = [parent]
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
        for i in range(n):
            d = os.path.join(parent, f"slot{i}")
            os.mkdir(d)
            _write(f"{d}/memory.max", str(memory_b))
            with contextlib.suppress(OSError):
                _write(f"{d}/memory.swap.max", "0")
            _write(f"{d}/pids.max", str(max_procs))
            self.dirs[i] = [d]
        self.version = 2
        return True

    def _v1(self, n: int, memory_b: int, max_procs: int, tag: str) -> bool:
        mem_own, pid_own = _own_path("memory"), _own_path("pids")
        if mem_own is None or pid_own is None or not os.path.isdir(f"{ROOT}/memory"):
            return False
        mem = os.path.join(f"{ROOT}/memory{mem_own}", tag)
        pids = os.path.join(f"{ROOT}/pids{pid_own}", tag)
        for b in (mem, pids):
            os.mkdir(b)
            self.bases.append(b)
        for i in range(n):
            m, p = f"{mem}/slot{i}", f"{pids}/slot{i}"
            os.mkdir(m)
            os.mkdir(p)
            _write(f"{m}/memory.limit_in_bytes", str(memory_b))
            with contextlib.suppress(OSError):  # swap accounting may be off
                _write(f"{m}/memory.memsw.limit_in_bytes", str(memory_b))
            _write(f"{p}/pids.max", str(max_procs))
            self.dirs[i] = [m, p]
        self.version = 1
        return True

    def close(self) -> None:
        """Remove the directories (their processes are dead; zombies may take a moment)."""
        for base in self.bases:
            for _ in range(50):
                try:
                    for d in os.listdir(base):
                        if os.path.isdir(os.path.join(base, d)):
                            os.rmdir(os.path.join(base, d))
                    os.rmdir(base)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.bases = []
