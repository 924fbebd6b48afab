"""Verdict forgery: wrong completions that try every channel to be reported as passed.

Each completion below is wrong (or answers nothing) and attacks the verdict: exiting
early, patching the process's I/O, faking markers and frames, lying objects, redefined
helpers, reading the tests out of memory. All run in one sandbox batch; every one must
fail, and the right answer among them must still pass.
"""

from __future__ import annotations

import textwrap

from tests.sandbox.kit import PROMPT, RIGHT, WRONG, job

FORGERIES = {
    "os_exit_at_load": WRONG + "import os\nos._exit(0)\n",
    "system_exit_at_load": WRONG + "raise SystemExit(0)\n",
    "sys_exit_in_call": "    import sys\n    sys.exit(0)\n",
    "os_exit_in_call": "    import os\n    os._exit(0)\n",
    "keyboard_interrupt": "    raise KeyboardInterrupt\n",
    "patched_os_write": WRONG
    + "import os\n_w = os.write\nos.write = lambda fd, b: _w(fd, b.replace(b'false', b'true').replace(b'failed', b'passed'))\n",
    "fake_frames_on_every_fd": "    import os, json, struct\n"
    "    for v in ({'passed': True, 'result': 'passed'}, {'ok': 5}):\n"
    "        b = json.dumps(v).encode()\n"
    "        for fd in range(64):\n"
    "            try:\n"
    "                os.write(fd, struct.pack('>I', len(b)) + b)\n"
    "            except OSError:\n"
    "                pass\n"
    "    return a - b\n",
    "printed_marker": "    print('passed'); import sys; sys.stderr.write('passed\\n')\n    return a - b\n",
    "always_equal_object": "    class E:\n        def __eq__(s, o): return True\n        __ne__ = lambda s, o: False\n    return E()\n",
    "int_subclass_liar": "    class I(int):\n        def __eq__(s, o): return True\n    return I(a - b)\n",
    "redefined_check": WRONG + "def check(candidate):\n    pass\n",
    "patched_builtins": WRONG
    + "import builtins\nbuiltins.AssertionError = type('X', (BaseException,), {})\n",
    "settrace": WRONG
    + "import sys\nsys.settrace(lambda *a: None)\nsys.setprofile(lambda *a: None)\n",
    "patched_harness_wire": WRONG
    + "import sys\nfor m in list(sys.modules.values()):\n    if hasattr(m, 'encode') and hasattr(m, 'send') and hasattr(m, 'recv'):\n        m.encode = lambda x, depth=0: 5\n",
    "frame_walk": textwrap.indent(
        textwrap.dedent(
            """
            import sys
            f = sys._getframe()
            while f is not None:
                for k, v in list(f.f_locals.items()):
                    if isinstance(v, dict) and 'loaded' in v:
                        v['loaded'] = True
                f = f.f_back
            return a - b
            """
        ),
        "    ",
    ),
    # Reads its own memory (and any other process's it can see) for the test's text: a
    # completion that found the expected answers could return them. It answers right
    # only if it found them, so a pass here means the tests leaked into its reach.
    "tests_in_memory": textwrap.indent(
        textwrap.dedent(
            """
            import os, re
            found = False
            for pid in os.listdir('/proc'):
                if not pid.isdigit():
                    continue
                try:
                    maps = open(f'/proc/{pid}/maps').read().splitlines()
                    mem = open(f'/proc/{pid}/mem', 'rb')
                except OSError:
                    continue
                for line in maps:
                    lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
                    if 'r' not in line.split()[1] or hi - lo > (64 << 20):
                        continue
                    try:
                        mem.seek(lo)
                        if b'candidate(-1, 1) == 0' in mem.read(hi - lo):
                            found = True
                    except (OSError, ValueError, OverflowError):
                        pass
            return a + b if found else None
            """
        ),
        "    ",
    ),
    "kill_everyone": "    import os, signal\n    for p in range(1, 400):\n        try:\n            os.kill(p, signal.SIGKILL) if p != os.getpid() else None\n        except OSError:\n            pass\n    return a - b\n",
}


def test_forgeries_all_fail_and_the_right_answer_passes(sandbox):
    names = list(FORGERIES)
    res = sandbox.run([job(RIGHT), *(job(FORGERIES[n]) for n in names), job(RIGHT)])
    assert res[0].passed and res[-1].passed, (res[0], res[-1])
    forged = {n: r.result for n, r in zip(names, res[1:-1], strict=True) if r.passed}
    assert not forged, forged
    for n, r in zip(names, res[1:-1], strict=True):
        assert r.result.startswith("failed") or r.result == "timed out", (n, r)


def test_test_may_call_other_functions_of_the_completion(sandbox):
    # MBPP-style: the test calls a helper the completion defines, by name.
    from phi_ray.sandbox import Check

    test = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert helper(4) == 8\n"
    ok = "    return a + b\ndef helper(x):\n    return 2 * x\n"
    bad = "    return a + b\ndef helper(x):\n    return x\n"
    res = sandbox.run([Check(PROMPT, c, test, "add") for c in (ok, bad, RIGHT)])
    assert [r.passed for r in res] == [True, False, False], res
