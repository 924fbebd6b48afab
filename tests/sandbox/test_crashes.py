"""Crashing the evaluator: whatever a sample does to itself or the machinery, it is a
failed sample with a reason, the evaluation goes on, and the next samples pass."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from phi_ray.sandbox import Limits, Sandbox, Script, signal_name
from phi_ray.sandbox.jobs import verdict
from tests.sandbox.kit import MODE, RIGHT, job

pytestmark = pytest.mark.skipif(
    MODE == "none", reason="no namespaces on this host: fork bombs would not be contained"
)

CRASHES = {
    "signal_40": ("    import os\n    os.kill(os.getpid(), 40)\n", "signal 40"),
    "sigkill_self": (
        "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
        "SIGKILL",
    ),
    "sigsegv": ("    import ctypes\n    ctypes.string_at(0)\n", "SIGSEGV"),
    "close_all_fds": ("    import os\n    os.closerange(0, 4096)\n    return a + b\n", "failed"),
    "rm_tmp_and_cwd": (
        "    import os, shutil\n    shutil.rmtree('/tmp', ignore_errors=True)\n"
        "    os.rmdir(os.getcwd()) if os.path.exists(os.getcwd()) else None\n    return a - b\n",
        "failed",
    ),
    "fork_bomb": (
        "    import os, time\n    while True:\n        try:\n            if os.fork() == 0:\n"
        "                os.setsid()\n        except OSError:\n            time.sleep(0.01)\n",
        "",
    ),
    "huge_stdout": (
        "    import os\n    for _ in range(2000):\n        os.write(1, b'y' * (1 << 20))\n        os.write(2, b'z' * (1 << 20))\n    return a - b\n",
        "failed",
    ),
    "huge_answer": ("    return 'x' * (40 << 20)\n", "failed"),
    "huge_exception": ("    raise ValueError('e' * (50 << 20))\n", "ValueError"),
    "deep_answer": (
        "    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n",
        "failed",
    ),
    "lone_surrogate": ("    return '\\udc80'\n", "failed"),
}


def test_self_inflicted_crashes_are_failed_samples(sandbox):
    names = list(CRASHES)
    t0 = time.monotonic()
    res = sandbox.run([*(job(CRASHES[n][0]) for n in names), job(RIGHT), job(RIGHT)])
    assert time.monotonic() - t0 < 40
    assert res[-1].passed and res[-2].passed, res[-2:]
    for n, r in zip(names, res, strict=False):
        assert not r.passed, (n, r)
        assert CRASHES[n][1] in r.result, (n, r.result)


@pytest.mark.parametrize("num", [40, 64, 9, 99])
def test_any_signal_number_is_a_reason_not_an_exception(num):
    # signal.Signals(40) raises ValueError: the verdict must not.
    assert signal_name(num).startswith("SIG") or signal_name(num) == f"signal {num}"
    r = verdict(
        {"verdict": {"gone": True}, "judge_status": 0, "cand_status": num, "stop": ""}, job(RIGHT)
    )
    assert not r.passed and "killed by" in r.result


def test_garbage_from_a_server_is_a_failed_sample():
    for ans in (
        {},
        {"verdict": "passed"},
        {"verdict": {"passed": True}, "judge_status": 9},
        {"verdict": {"passed": True, "result": "passed"}, "judge_status": None},
        {"verdict": [1], "judge_status": 0},
        {"stop": "memory"},
    ):
        assert not verdict(ans, job(RIGHT)).passed, ans


def test_machinery_failures_are_failed_samples_never_exceptions():
    with Sandbox(Limits(timeout_s=3.0), parallel=1) as sb:
        assert sb.run([job(RIGHT)])[0].passed
        server = sb._servers[0]
        os.killpg(server.proc.pid, signal.SIGKILL)  # the server dies between jobs
        server.proc.wait()
        assert sb.run([job(RIGHT)])[0].passed  # restarted
        shutil.rmtree(sb.base)  # its temp dir vanishes, and then the server dies again
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        res = sb.run([job(RIGHT), Script("assert True")])
        assert [r.passed for r in res] == [False, False]
        assert all("sandbox error" in r.result for r in res), res
