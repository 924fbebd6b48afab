"""Isolation per sample: state, sockets, host files, secrets, signals, network, memory.

Each probe is a trusted Script asserting one property from inside the sandbox (so a
probe *passes* when the property holds); all probes run in one batch per sandbox.
"""

from __future__ import annotations

import os
import signal
import socket
import textwrap

import pytest

from phi_ray.sandbox import Limits, Sandbox, Script
from tests.sandbox.kit import LIMITS, MODE, RIGHT, job
from tests.sandbox.test_modes import UNMOUNT

pytestmark = pytest.mark.skipif(
    MODE == "none",
    reason="no namespaces on this host: the isolation probes describe namespace modes",
)

STRONG = MODE == "strong"


def _probes(port: int, secret: str, evaluator: int, unix_path: str) -> dict[str, str]:
    return {
        "no_secret_env": "import os\nassert 'PHI_RAY_TEST_SECRET' not in str(os.environ)\n",
        "no_secret_in_any_proc_environ": textwrap.dedent(
            """
            import os
            for p in os.listdir('/proc'):
                if p.isdigit():
                    try:
                        data = open(f'/proc/{p}/environ', 'rb').read()
                    except OSError:
                        continue
                    assert b'PHI_RAY_TEST_SECRET' not in data, p
            """
        ),
        "evaluator_invisible": f"import os\nassert not os.path.exists('/proc/{evaluator}/environ') or {evaluator} == os.getpid()\n",
        "host_file_unreadable": f"import os\nassert not os.path.exists({secret!r})\n"
        f"try:\n    open({secret!r}).read()\n    raise SystemExit('read it')\nexcept FileNotFoundError:\n    pass\n",
        "no_host_trees": "import os\nfor p in ('/work', '/root/.ssh', '/etc/passwd', '/home', '/tmp/ray', '/var/run/docker.sock', '/run'):\n    assert not os.path.exists(p), p\n",
        "no_site_packages": "import os, sys, sysconfig\nsp = sysconfig.get_paths()['purelib']\nassert not os.path.isdir(sp) or os.listdir(sp) == [], sp\n",
        "tcp_refused": f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n    raise SystemExit('connected')\nexcept OSError:\n    pass\n",
        "unix_socket_unreachable": f"import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({unix_path!r})\n    s.sendall(b'leak')\n    raise SystemExit('connected')\nexcept OSError:\n    pass\n",
        "abstract_socket_unreachable": "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('\\0phi-ray-test-abstract')\n    raise SystemExit('connected')\nexcept OSError:\n    pass\n",
        "cannot_signal_evaluator": f"import os, signal\ntry:\n    os.kill({evaluator}, signal.SIGUSR1)\nexcept OSError:\n    pass\n",
        "root_is_read_only": "import os\nfor p in ('/x', '/usr/x', '/proc/x'):\n    try:\n        open(p, 'w')\n        raise SystemExit('wrote ' + p)\n    except OSError:\n        pass\n",
        "cannot_unmount": UNMOUNT,
        "not_root": "import os\nassert os.getuid() != 0 and os.geteuid() != 0\n"
        if STRONG
        else "pass\n",
    }


@pytest.fixture
def unix_listener(tmp_path):
    path = f"/tmp/phi-ray-test-{os.getpid()}.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    os.chmod(path, 0o777)
    s.listen()
    a = socket.socket(socket.AF_UNIX)
    a.bind("\0phi-ray-test-abstract")
    a.listen()
    s.setblocking(False)
    a.setblocking(False)
    yield path, (s, a)
    s.close()
    a.close()
    os.remove(path)


def test_probes_hold_and_nothing_reaches_the_host(
    sandbox, listener, secret_file, unix_listener, monkeypatch
):
    port, got = listener
    path, socks = unix_listener
    monkeypatch.setenv("PHI_RAY_TEST_SECRET", "sk-do-not-leak")
    hits = []
    old = signal.signal(signal.SIGUSR1, lambda *a: hits.append(a))
    try:
        probes = _probes(port, secret_file, os.getpid(), path)
        res = sandbox.run([Script(p) for p in probes.values()])
    finally:
        signal.signal(signal.SIGUSR1, old)
    failed = {n: r.result for n, r in zip(probes, res, strict=True) if not r.passed}
    assert not failed, failed
    assert got == [] and hits == []
    for s in socks:
        with pytest.raises(BlockingIOError):
            s.accept()


def test_no_state_crosses_samples():
    # One slot, so every sample runs in the same server, one after the other.
    with Sandbox(LIMITS, parallel=1, allow_weak=True) as sb:
        plant = "import os\nfor d in ('/tmp', '/var/tmp', '/dev/shm', os.getcwd()):\n    open(os.path.join(d, 'planted'), 'w').write('x')\n"
        look = "import os\nfor d in ('/tmp', '/var/tmp', '/dev/shm', os.getcwd()):\n    assert not os.path.exists(os.path.join(d, 'planted')), d\n    assert os.listdir(d) == [], (d, os.listdir(d))\n"
        # System V IPC outlives its creator unless the sample has its own namespace.
        ipc = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        ipc_plant = ipc + "assert libc.msgget(0x5A5A, 0o1666) >= 0\n"
        ipc_look = ipc + "assert libc.msgget(0x5A5A, 0) < 0 and ctypes.get_errno() == 2\n"
        jobs = [plant, look, plant, look]
        if MODE != "none":
            jobs += [ipc_plant, ipc_look]
        res = sb.run([Script(j) for j in jobs])
    assert [r.passed for r in res] == [True] * len(jobs), res


def test_memory_is_limited_for_the_sample_as_a_whole(sandbox):
    # Four children of 100 MB each: every process is under RLIMIT_AS (256 MB) but the
    # sample holds 400 MB. It must not be allowed to finish (and so pass).
    hog = textwrap.indent(
        textwrap.dedent(
            """
            import os, time
            kids = []
            for _ in range(4):
                pid = os.fork()
                if pid == 0:
                    b = bytearray(100 << 20)
                    for i in range(0, len(b), 4096):
                        b[i] = 1
                    time.sleep(1.5)
                    os._exit(0)
                kids.append(pid)
            for k in kids:
                _, st = os.waitpid(k, 0)
                assert st == 0, st
            return a + b
            """
        ),
        "    ",
    )
    shm = "    open('/dev/shm/big', 'wb').write(b'x' * (300 << 20))\n    return a + b\n"
    res = sandbox.run([job(hog), job(shm), job(RIGHT)])
    assert not res[0].passed, res[0]
    assert not res[1].passed, res[1]
    assert res[2].passed


def test_forks_are_bounded_and_leave_nothing_behind():
    with Sandbox(Limits(timeout_s=2.0, memory_mb=256, max_procs=8), parallel=1) as sb:
        count = "import os, time\nn = 0\nwhile n < 100:\n    try:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n        n += 1\n    except OSError:\n        break\nassert n < 100, n\n"
        res = sb.run([Script(count), Script("assert True")])
        assert [r.passed for r in res] == [True, True], res
        if STRONG:
            import subprocess

            uids = {sb.uids[0], sb.uids[0] + 1}
            out = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True).stdout
            assert not [u for u in out.split() if int(u) in uids]
