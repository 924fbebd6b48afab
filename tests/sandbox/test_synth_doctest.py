"""synth's doctest runs go through the same sandbox: LLM-written code cannot forge its
result, plant files in the run directory, reach the network, or flood the parent."""

from __future__ import annotations

import os
import time

import pytest

from phi_ray.synth import sandbox
from tests.sandbox.kit import MODE

pytestmark = pytest.mark.skipif(
    MODE != "strong", reason="synth refuses a weak sandbox (tested in test_modes)"
)


def fn(body: str, post: str = "", example: str = "f(2)") -> str:
    """``f`` whose docstring says ``f(2)`` is 5; every body below is wrong."""
    return f'def f(x):\n    """\n    >>> {example}\n    5\n    """\n{body}{post}'


def test_hostile_doctest_code(tmp_path, listener):
    port, got = listener
    run_dir = tmp_path / "runs" / "r1" / "classifier"
    run_dir.mkdir(parents=True)
    for p in (run_dir, *list(run_dir.parents)[:3]):
        os.chmod(p, 0o777)
    planted = run_dir / "model.joblib"
    wrong = "    return x\n"
    attacks = {
        "exit_at_import": fn(wrong, "import os\nos._exit(0)\n"),
        "exit_in_example": fn(wrong, example="__import__('os')._exit(0)"),
        "fake_result_files": fn(
            wrong,
            "import json\nfor p in ('result.json', '/tmp/result.json'):\n    try:\n"
            "        json.dump({'attempted': 1, 'failed': 0, 'error': ''}, open(p, 'w'))\n"
            "    except OSError:\n        pass\n",
        ),
        "patch_displayhook": fn(
            wrong, "import sys\nsys.displayhook = sys.__displayhook__ = lambda v: print(5)\n"
        ),
        "plant_model": fn(f"    open({str(planted)!r}, 'wb').write(b'pickle')\n    return 5\n"),
        "network": fn(
            f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    return 5\n"
        ),
        "stderr_flood": fn(
            "    import os\n    for _ in range(400):\n        os.write(2, b'e' * (1 << 20))\n    return x\n"
        ),
        "stdout_flood": fn("    print('5' * (300 << 20))\n"),
        "fork_bomb": fn(
            "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
        ),
        "proc_secrets": fn(
            "    import os\n    for p in os.listdir('/proc'):\n        try:\n"
            "            if b'PHI_RAY_TEST' in open(f'/proc/{p}/environ', 'rb').read():\n"
            "                return 5\n        except OSError:\n            pass\n    return x\n"
        ),
    }
    os.environ["PHI_RAY_TEST_SECRET"] = "1"
    try:
        t0 = time.monotonic()
        res = {n: sandbox.run_examples(c, timeout_s=3.0, memory_mb=256) for n, c in attacks.items()}
        assert time.monotonic() - t0 < 30
    finally:
        del os.environ["PHI_RAY_TEST_SECRET"]
    bad = {
        n: r
        for n, r in res.items()
        if r.status not in (sandbox.FAILED, sandbox.ERROR, sandbox.TIMEOUT)
    }
    assert not bad, bad
    assert not planted.exists()
    assert got == []
    for r in res.values():
        assert len(r.detail) <= 600
    good = fn("    return x + 3\n")
    ok = sandbox.run_examples(good, ["\n>>> f(0)\n3\n"], timeout_s=3.0, memory_mb=256)
    assert ok.status == sandbox.PASSED and ok.attempted == 2, ok
    # The judge counts the examples, not the program: one right, one wrong.
    half = sandbox.run_examples(good, ["\n>>> f(0)\n4\n"], timeout_s=3.0, memory_mb=256)
    assert half.status == sandbox.FAILED and (half.attempted, half.failed) == (2, 1), half
