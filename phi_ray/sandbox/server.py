"""The fork server: one per worker slot, started as ``python -I -S server.py CONFIG``.

Started by the host (:mod:`phi_ray.sandbox.host`) from an allow-listed environment,
inside new network, PID, mount, IPC and UTS namespaces where the host has them. It builds the
filesystem view (:func:`jail.build_view`), then serves jobs read from stdin, forever:

1. a header frame (limits, sizes) -- the job's code is never read by the server itself;
2. fork the **candidate**: it reads its own payload (the program) from stdin, joins the
   slot's cgroup, drops to the slot's uid (or a user namespace of its own), sets its
   rlimits and runs :func:`candidate.serve` with nothing open but its two request pipes;
3. fork the **judge** at the same time: it reads its own payload (the tests) from a
   pipe of its own that the server never reads (so no candidate forked from the server
   can find a test in its memory), becomes non-dumpable and another uid, and runs
   :func:`judge.judge`, which writes the verdict on a pipe only it and the server hold;
4. wait for that verdict, the judge's exit or the wall clock; kill everything left in
   the namespace (as its init); give every sample fresh tmpfs ``/tmp``, ``/var/tmp``,
   ``/dev/shm``; answer the host with one bounded JSON line.

The verdict the host gets is the judge's, sent on the judge's own pipe; the candidate
process's exit status and output are only used to explain a failure.
"""

import contextlib
import gc
import json
import os
import select
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from phi_ray.sandbox import candidate, jail, judge, wire

MAX_HEADER = 1 << 16
MAX_VERDICT = 1 << 16
TICK_S = 0.02  # how often the memory watchdog samples (no cgroup)


def _close_fds_except(keep: set[int]) -> None:
    lo = 0
    for fd in sorted(keep):
        os.closerange(lo, fd)  # close_range(2): one syscall per gap
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def _stdio_null(keep: set[int]) -> None:
    debug = bool(os.environ.get("PHI_RAY_SANDBOX_DEBUG"))  # harness tracebacks on stderr
    _close_fds_except(keep | ({2} if debug else set()))
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1) if debug else (0, 1, 2):
        if fd != null:
            os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _payload(fd: int, n: int) -> dict:
    return json.loads(wire._read_exact(fd, n).decode("utf-8", "surrogatepass"))


def _cgroup_join(dirfds: list[int]) -> None:
    for d in dirfds:
        fd = os.open("cgroup.procs", os.O_WRONLY, dir_fd=d)
        try:
            os.write(fd, b"0\n")
        finally:
            os.close(fd)


def _candidate(cfg: dict, hdr: dict, r: int, w: int, sync: int, work: str) -> None:
    os.setsid()
    os.close(cfg["judge_fd"])
    job = _payload(0, hdr["cand_len"])
    os.write(sync, b"k")
    _cgroup_join(cfg["cgroup_fds"])
    lim = hdr["limits"]
    _stdio_null({r, w})
    os.chdir(work)
    os.environ.clear()
    os.environ.update(hdr["env"], HOME=work, TMPDIR=work)
    if cfg["pidns"]:
        jail.new_ipc_namespace()
    nproc = lim["nproc"] if cfg["cand_uid"] is not None else None
    jail.set_limits(lim["cpu"], lim["mem"], lim["fsize"], nproc, 256)
    jail.drop_privileges(cfg["cand_uid"], cfg["nested_userns"])
    if cfg["landlock"]:
        jail.landlock(cfg["trees"], [work, "/dev/null"])
    candidate.serve(r, w, job["code"], job["filename"], job["module"])


def _judge(cfg: dict, hdr: dict, r: int, w: int, out: int, sync: int) -> None:
    os.setsid()
    job = _payload(cfg["judge_fd"], hdr["judge_len"])
    os.write(sync, b"k")
    jail.prctl(jail.PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<judge>/mem or fd by anyone
    _stdio_null({r, w, out})
    lim = hdr["limits"]
    jail.set_limits(lim["cpu"] + 1, max(lim["mem"], 1 << 30), 1 << 20, None, 64)
    if cfg["judge_uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["judge_uid"])
        os.setuid(cfg["judge_uid"])
        jail.prctl(jail.PR_SET_DUMPABLE, 0)  # setuid resets it
    if cfg["landlock"]:
        jail.landlock(cfg["trees"], [])
    wire.send(out, judge.judge(r, w, job))


def _fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn(*args)
        except BaseException:
            if os.environ.get("PHI_RAY_SANDBOX_DEBUG"):
                import traceback

                traceback.print_exc()
            os._exit(3)
        os._exit(0)
    return pid


def _descendants(roots: set[int]) -> set[int]:
    """Processes in the sessions of ``roots`` (no PID namespace: the best we can see)."""
    out = set()
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                with open(f"/proc/{p}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[3]) in roots or int(fields[1]) == os.getpid():  # session, ppid
                    out.add(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rss_bytes(pids: set[int]) -> int:
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def _sample_pids(cfg: dict, cand: int, judge_pid: int) -> set[int]:
    if cfg["pidns"]:
        pids = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        return pids - {1, judge_pid}
    return _descendants({cand}) - {judge_pid}


def _kill_all(cfg: dict, roots: set[int]) -> dict[int, int]:
    """SIGKILL every process of the sample and reap it; returns {pid: wait status}."""
    statuses: dict[int, int] = {}
    if cfg["pidns"] and os.getpid() != 1:
        # kill(-1) outside a PID namespace, as root, would kill every process on the host.
        raise RuntimeError("sandbox: pidns mode but this process is not its namespace's init")
    if cfg["pidns"]:
        # As init: one kill(-1) reaches every process in the namespace, and the kernel
        # aborts any fork racing with it, so blocking waits end.
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                pid, st = os.waitpid(-1, 0)
            except ChildProcessError:
                return statuses
            statuses[pid] = st
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if cfg["pidns"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)  # as init: everything else in the namespace
        else:
            for p in roots | _descendants(roots):
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(p, signal.SIGKILL)
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return statuses
            if pid == 0:
                break
            statuses[pid] = st
        time.sleep(0.002)
    return statuses


def _read_counter(dirfd: int, name: str, key: str) -> int:
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dirfd)
        try:
            text = os.read(fd, 4096).decode()
        finally:
            os.close(fd)
    except OSError:
        return 0
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v)
    return 0


def _ooms(cfg: dict) -> int:
    fds = cfg["cgroup_fds"]
    if not fds:
        return 0
    name = "memory.events" if cfg["cgroup_version"] == 2 else "memory.oom_control"
    return _read_counter(fds[0], name, "oom_kill")


def _wait(cfg: dict, hdr: dict, vr: int, cand: int, judge_pid: int) -> tuple[bytes, str]:
    """Read the verdict until it is complete, the judge exits, or time runs out."""
    data, end = b"", time.monotonic() + hdr["limits"]["timeout"]
    mem = hdr["limits"]["mem"]
    watch = not cfg["cgroup_fds"]
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return data, "timeout"
        if select.select([vr], [], [], min(left, TICK_S) if watch else left)[0]:
            chunk = os.read(vr, MAX_VERDICT)
            if not chunk:
                return data, ""
            data += chunk
            if len(data) > MAX_VERDICT:
                return b"", ""
        elif watch and _rss_bytes(_sample_pids(cfg, cand, judge_pid)) > mem:
            return data, "memory"


def _reap(pid: int, grace_s: float) -> int | None:
    """``pid``'s wait status if it has exited (waiting up to ``grace_s``), else None."""
    end = time.monotonic() + grace_s
    while True:
        try:
            got, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got:
            return st
        if time.monotonic() >= end:
            return None
        time.sleep(0.005)


def _parse_verdict(data: bytes) -> object:
    """The judge's one frame, or None if it is not exactly one well-formed frame."""
    if len(data) < 4 or int.from_bytes(data[:4], "big") != len(data) - 4:
        return None
    try:
        return json.loads(data[4:].decode("utf-8", "surrogatepass"))
    except ValueError:
        return None


def _one(cfg: dict, hdr: dict) -> dict:
    t0 = time.monotonic()
    j2c_r, j2c_w = os.pipe()
    c2j_r, c2j_w = os.pipe()
    sync_r, sync_w = os.pipe()
    oom0 = _ooms(cfg)
    if not cfg["view"]:
        import shutil
        import tempfile  # (none mode only: the view's /tmp is a tmpfs of its own)
    work = "/tmp" if cfg["view"] else tempfile.mkdtemp(dir=cfg["workdir"])
    if not cfg["view"] and cfg["cand_uid"] is not None:
        os.chown(work, cfg["cand_uid"], cfg["cand_uid"])
    vr, vw = os.pipe()
    # Each child reads its own payload (the candidate from stdin, the judge from its own
    # pipe): this process never holds a test, so no later candidate forked from it can.
    cand = _fork(_candidate, cfg, hdr, j2c_r, c2j_w, sync_w, work)
    judge_pid = _fork(_judge, cfg, hdr, c2j_r, j2c_w, vw, sync_w)
    for fd in (j2c_r, j2c_w, c2j_r, c2j_w, vw, sync_w):
        os.close(fd)
    data, stop = _wait(cfg, hdr, vr, cand, judge_pid)
    os.close(vr)
    verdict = _parse_verdict(data)
    # Did the candidate end on its own (its status explains a failure), or is it still
    # running and about to be killed by us (then its status says nothing)?
    died = _reap(cand, 0.2 if isinstance(verdict, dict) and verdict.get("gone") else 0.0)
    statuses = _kill_all(cfg, {cand, judge_pid})
    statuses[cand] = died
    synced = select.select([sync_r], [], [], 0)[0] and os.read(sync_r, 4) == b"kk"
    os.close(sync_r)
    if not synced:  # a payload was not read whole: our input streams are out of step
        raise SystemExit("a child failed before reading its payload")
    if cfg["view"]:
        jail.reset_tmp(cfg["tmp_mb"], only_dirty=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "verdict": verdict,
        "stop": stop,
        "judge_status": statuses.get(judge_pid),
        "cand_status": statuses.get(cand),
        "oom": _ooms(cfg) > oom0,
        "duration_s": time.monotonic() - t0,
    }


def main() -> None:
    cfg = json.loads(sys.argv[1])
    cfg["cgroup_fds"] = [os.open(d, os.O_RDONLY | os.O_DIRECTORY) for d in cfg["cgroups"]]
    if cfg["view"]:
        jail.build_view(cfg["view"], cfg["trees"], cfg["tmp_mb"])
    if not cfg["pidns"]:
        jail.prctl(jail.PR_SET_CHILD_SUBREAPER, 1)  # orphans come back to us to be killed
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    # Children fork from this heap: frozen objects are never scanned by their collector,
    # so their pages stay shared instead of being copied into every child.
    gc.collect()
    gc.freeze()
    os.write(1, b'{"ready": true}\n')
    while True:
        try:
            hdr = wire.recv(0, MAX_HEADER)
        except wire.WireError:
            return
        if hdr.get("kind") == "doctest" and "doctest" not in sys.modules:
            import doctest  # noqa: F401 - once, here: not in every judge, nor in evaluate's

            gc.collect()
            gc.freeze()
        out = _one(cfg, hdr)
        os.write(1, (json.dumps(out) + "\n").encode())


if __name__ == "__main__":
    main()
