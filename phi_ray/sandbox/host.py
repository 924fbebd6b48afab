"""The host side: a pool of fork servers, one per worker slot.

A :class:`Sandbox` starts its servers lazily (``unshare`` + ``python -I -S server.py``,
from an allow-listed environment: no API keys, no Ray tokens), sends each job on a free
slot, and turns the server's bounded answer into an :class:`ExecResult`
(:func:`~phi_ray.sandbox.jobs.verdict`). Every failure
of the machinery -- a server that dies, hangs, or answers garbage, an unknown signal, a
vanished temp dir -- is a failed sample with a reason, never an exception out of
:meth:`Sandbox.run`; the slot's server is restarted for the next job.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from phi_ray.sandbox import modes, wire
from phi_ray.sandbox.cgroups import SlotCgroups
from phi_ray.sandbox.jobs import ExecResult, Job, Limits, Script, failed, verdict

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
_ENV_ALLOW = ("LANG", "LC_ALL", "TZ")
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_ANSWER = 1 << 17  # one JSON line from a server


# --------------------------------------------------------------------------- servers


class _Server:
    """One slot's fork server (a subprocess speaking frames in, JSON lines out)."""

    def __init__(self, cfg: dict, prefix: list[str], python: str) -> None:
        self.cfg, self.prefix, self.python = cfg, prefix, python
        self.proc: subprocess.Popen | None = None
        self.judge_w: int | None = None  # the judge's payload pipe

    def _start(self) -> subprocess.Popen:
        env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
        env.update(PATH=_SAFE_PATH, LANG=env.get("LANG", "C.UTF-8"))
        debug = os.environ.get("PHI_RAY_SANDBOX_DEBUG")
        if debug:
            env["PHI_RAY_SANDBOX_DEBUG"] = debug
        judge_r, judge_w = os.pipe()
        cfg = {**self.cfg, "judge_fd": judge_r}
        # Only the server's own crash lands here: its children close their stderr.
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            [*self.prefix, self.python, "-I", "-S", SERVER, json.dumps(cfg)],
            pass_fds=(judge_r,),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if debug else err,
            cwd="/",
            env=env,
            start_new_session=True,
        )
        os.close(judge_r)
        self.judge_w = judge_w
        try:
            ready = json.loads(_readline(proc.stdout.fileno(), 60))
            if not ready.get("ready"):
                raise ValueError("no ready line")
        except (OSError, ValueError, TimeoutError) as e:
            self._kill(proc)
            os.close(judge_w)
            self.judge_w = None
            err.seek(max(0, err.seek(0, 2) - 600))
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
            raise SandboxError(
                f"sandbox server did not start: {type(e).__name__}: {e}; {' | '.join(tail)}"
            ) from None
        finally:
            err.close()
        return proc

    def call(self, header: dict, cand: bytes, judge: bytes, wait_s: float) -> dict:
        """Send one job; a server that dies or hangs is killed, restarted next time."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        header = {**header, "cand_len": len(cand), "judge_len": len(judge)}
        try:
            fd = self.proc.stdin.fileno()
            wire.send(fd, header)
            for out, blob in ((fd, cand), (self.judge_w, judge)):
                view = memoryview(blob)
                while view:
                    view = view[os.write(out, view) :]
            ans = json.loads(_readline(self.proc.stdout.fileno(), wait_s))
            if not isinstance(ans, dict):
                raise ValueError("answer is not an object")
            return ans
        except (OSError, ValueError, TimeoutError) as e:
            self.close()
            raise SandboxError(f"sandbox server failed: {type(e).__name__}: {e}") from None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        if self.judge_w is not None:
            with contextlib.suppress(OSError):
                os.close(self.judge_w)
            self.judge_w = None
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(self.proc)
        self.proc.stdout.close()
        self.proc = None


class SandboxError(RuntimeError):
    """The sandbox machinery failed (not the program under test)."""


def _readline(fd: int, wait_s: float) -> bytes:
    buf, deadline = b"", time.monotonic() + wait_s
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no answer within {wait_s:.0f}s")
        chunk = os.read(fd, MAX_ANSWER)
        if not chunk:
            raise OSError("sandbox server exited")
        buf += chunk
        if len(buf) > MAX_ANSWER:
            raise ValueError("answer too long")
    return buf


def view_trees(python: str) -> list[str]:
    """What the interpreter needs: /usr and its installation prefix."""
    prefix = os.path.realpath(sys.base_prefix)
    if os.path.realpath(python) != os.path.realpath(sys.executable):
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    return sorted({"/usr", prefix})


# --------------------------------------------------------------------------- the pool


@dataclass
class Sandbox:
    """A bounded pool of fork servers; use as a context manager.

    ``mode``: None detects (:func:`modes.detect`); a weak mode raises
    :class:`modes.WeakSandboxError` unless ``allow_weak``.
    """

    limits: Limits = field(default_factory=Limits)
    parallel: int = 0
    mode: str | None = None
    allow_weak: bool = False
    uid_base: int = 1_500_000_000
    python: str | None = None

    def __post_init__(self) -> None:
        self.mode = modes.choose(self.allow_weak, self.mode)
        self.parallel = min(self.parallel or os.cpu_count() or 1, 128)
        self.python = os.path.realpath(self.python or sys.executable)
        # Separate uids need root and the strong mode's view (unshare -r maps one uid
        # only; without a view the interpreter may sit under a directory they cannot read).
        root = os.geteuid() == 0 and self.mode == "strong"
        self.base = tempfile.mkdtemp(prefix="phi-ray-sandbox-")
        os.chmod(self.base, 0o711)
        tag = os.path.basename(self.base)
        mem_b = self.limits.memory_mb << 20
        self.cgroups = SlotCgroups(
            self.parallel, mem_b, self.limits.max_procs, tag, enabled=self.mode != "userns"
        )
        # Uids differ per evaluating process, so two evaluations never share a quota:
        # candidate base + 2 * (256 * (pid mod 2^20) + slot), its judge the next uid.
        first = self.uid_base + 512 * (os.getpid() % (1 << 20))
        self.uids = [first + 2 * i for i in range(self.parallel)] if root else []
        prefix = {
            "strong": ["unshare", "-n", "-p", "-f", "-m", "-i", "-u", "--kill-child", "--"],
            "userns": ["unshare", "-r", "-n", "-p", "-f", "-m", "-i", "-u", "--kill-child", "--"],
            "none": [],
        }[self.mode]
        trees = view_trees(self.python)
        self._servers: list[_Server] = []
        self._slots: queue.Queue[_Server] = queue.Queue()
        for i in range(self.parallel):
            work = os.path.join(self.base, f"slot{i}")
            os.mkdir(work)
            cfg = {
                "view": work if self.mode != "none" else "",
                "workdir": work,
                "trees": trees,
                "tmp_mb": 2 * self.limits.max_file_mb + 1,  # RLIMIT_FSIZE stops a file first
                "pidns": self.mode != "none",
                "cand_uid": self.uids[i] if root else None,
                "judge_uid": self.uids[i] + 1 if root else None,
                "nested_userns": self.mode == "userns",
                "landlock": self.mode == "none",
                "cgroups": self.cgroups.dirs[i],
                "cgroup_version": self.cgroups.version,
            }
            self._servers.append(_Server(cfg, prefix, self.python))
            self._slots.put(self._servers[-1])
        self._probe()

    def _probe(self) -> None:
        """One trivial job: a host where the sandbox cannot run is an error here, naming
        why, rather than every sample failing (pass@k 0) with the same reason."""
        res = self.run_one(Script("pass"))
        if not res.passed:
            self.close()
            raise SandboxError(f"the {self.mode} sandbox does not work here: {res.result}")

    @property
    def memory_scope(self) -> str:
        return f"cgroup v{self.cgroups.version}" if self.cgroups.version else "rss watchdog"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self._servers:
            s.close()
        self.cgroups.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def run(self, jobs: Sequence[Job | str], progress: bool = False) -> list[ExecResult]:
        """Execute every job (in parallel, bounded); results in input order. A plain
        string is a :class:`Script`."""
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(self.parallel, thread_name_prefix="sandbox") as pool:
            futures = [pool.submit(self._run_slot, j) for j in jobs]
            bar = tqdm(total=len(futures), desc="execute", unit="prog", disable=not progress)
            out = []
            for f in futures:
                out.append(f.result())
                bar.update()
            bar.close()
        return out

    def _run_slot(self, job: Job | str) -> ExecResult:
        server = self._slots.get()  # thread-safe: one job per slot at a time
        try:
            return self.run_one(job, server)
        finally:
            self._slots.put(server)

    def run_one(self, job: Job | str, server: _Server | None = None) -> ExecResult:
        """Execute one job in a fresh candidate and judge; never raises for the job."""
        if server is None:
            return self._run_slot(job)
        if isinstance(job, str):
            job = Script(job)
        lim, t0 = self.limits, time.monotonic()
        try:
            cand_job, judge_job = job.payloads()
            cand, judge = (
                json.dumps(p).encode("utf-8", "surrogatepass") for p in (cand_job, judge_job)
            )
            env = {k: os.environ[k] for k in _ENV_ALLOW if k in os.environ}
            env.update(PATH=_SAFE_PATH, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
            header = {
                "kind": judge_job["kind"],
                "env": env,
                "limits": {
                    "cpu": lim.cpu_s,
                    "mem": lim.memory_mb << 20,
                    "fsize": lim.max_file_mb << 20,
                    "nproc": lim.max_procs,
                    "timeout": lim.timeout_s,
                },
            }
            ans = server.call(header, cand, judge, wait_s=lim.timeout_s + 30)
            return verdict(ans, job)
        except Exception as e:
            return failed(
                job, f"failed: sandbox error ({type(e).__name__}: {e})"[:500], time.monotonic() - t0
            )
