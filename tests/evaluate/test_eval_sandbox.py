"""Hostile programs fail as their own result, without harming the host or other samples."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from phi_ray.evaluate.sandbox import Limits, Sandbox, probe_isolation

ISO = probe_isolation()
DROPS_UID = ISO.mode == "strong"
NAMESPACES = ISO.mode in ("strong", "userns")
pytestmark = pytest.mark.skipif(
    not NAMESPACES, reason="no namespaces here: the weak mode is tested in tests/sandbox"
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(
        Limits(timeout_s=3.0, memory_mb=256, max_procs=16, max_file_mb=4),
        parallel=2,
        allow_weak=True,
    ) as sb:
        yield sb


# `listener` (a real TCP server on 127.0.0.1) comes from the root conftest.


def test_plain_pass_fail_and_early_exit(sandbox):
    progs = [
        "assert sum(range(5)) == 10",
        "assert 1 == 2",
        "import sys; sys.exit(0)",
        "import os; os._exit(0)",
    ]
    res = sandbox.run(progs)
    assert [r.passed for r in res] == [True, False, False, False]
    assert res[1].result.startswith("failed: AssertionError")
    assert "SystemExit" in res[2].result


def test_hostile_samples_fail_and_neighbours_are_unaffected(
    sandbox, tmp_path, listener, monkeypatch
):
    port, got = listener
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-do-not-leak")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.chmod(tmp_path, 0o755)  # reachable, so only the sandbox's identity protects it
    good = "def f(x):\n    return x * 2\nassert f(21) == 42\n"
    hostile = {
        "loop": "while True:\n    pass\n",
        "sleep": "import time\ntime.sleep(60)\n",
        "memory": "blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n",
        "rm": f"import os, shutil\nos.remove({str(victim)!r})\nshutil.rmtree({str(tmp_path)!r})\n",
        "secret": "import os\nassert os.environ['OPENAI_API_KEY'].startswith('sk-')\n",
        "proc_secret": "import os\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n            assert b'sk-test-secret' not in open(f'/proc/{p}/environ','rb').read()\n        except OSError:\n            pass\nraise RuntimeError('no secret found')\n",
        "socket": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')\n",
        "bigfile": "open('big.bin', 'wb').write(b'x' * (64 << 20))\n",
        "spam": "while True:\n    print('y' * 10000)\n",
        "kill": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
    }
    if DROPS_UID:
        hostile["home"] = "import os\nprint(os.listdir('/root/.ssh'), os.listdir('/work'))\n"
    progs = [good, *hostile.values(), good]
    t0 = time.monotonic()
    res = sandbox.run(progs)
    assert time.monotonic() - t0 < 30
    assert res[0].passed and res[-1].passed, (res[0], res[-1])
    for name, r in zip(hostile, res[1:-1], strict=True):
        assert not r.passed, (name, r)
    by = dict(zip(hostile, res[1:-1], strict=True))
    assert by["loop"].result == "timed out" or "SIGXCPU" in by["loop"].result
    assert by["sleep"].result == "timed out"
    assert "MemoryError" in by["memory"].result
    assert "File too large" in by["bigfile"].result
    assert "KeyError" in by["secret"].result
    assert "PermissionError" in by["kill"].result
    assert victim.read_text() == "precious"
    assert got == []  # nothing reached the host's server
    assert os.environ["OPENAI_API_KEY"] == "sk-test-secret-do-not-leak"


@pytest.mark.skipif(
    not (DROPS_UID and NAMESPACES), reason="fork-bomb defence (own uid + PID namespace) unavailable"
)
def test_fork_bomb_is_contained(sandbox):
    # Bounded by RLIMIT_NPROC=16 on the slot's own uid, and killed with its PID namespace.
    bomb = (
        "import os, time\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"  # try to escape the process group
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    # After a bomb, its slot's uid must have its whole process quota back.
    forks = "import os\nfor _ in range(8):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n"
    res = sandbox.run([bomb, bomb, forks, forks, forks, forks])
    assert [r.passed for r in res] == [False, False, True, True, True, True], res
    uids = set(sandbox.uids)
    assert len(uids) == 2
    out = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True).stdout.split()
    assert not [u for u in out if int(u) in uids], "sandboxed processes survived their run"


def test_samples_go_through_the_judge(tmp_path):
    # execute_samples builds Check jobs: a completion that exits early, or returns an
    # object equal to everything, fails; the reference-style program is never run whole.
    from phi_ray.evaluate.execute import execute_samples
    from phi_ray.evaluate.problems import Problem

    p = Problem(
        "T/0", 'def f(x):\n    """Double."""\n', "def check(c):\n    assert c(2) == 4\n", "f"
    )
    samples = [
        {"task_id": "T/0", "completion": c}
        for c in (
            "    return 2 * x\n",
            "    import os\n    os._exit(0)\n",
            "    class E:\n        __eq__ = lambda s, o: True\n    return E()\n",
        )
    ]
    with Sandbox(Limits(timeout_s=5.0), parallel=2) as sb:
        rows, _ = execute_samples([p], samples, sb)
    assert [r["passed"] for r in rows] == [True, False, False], rows


def test_isolation_mode_as_root():
    if os.geteuid() == 0:
        assert ISO.mode == "strong"
