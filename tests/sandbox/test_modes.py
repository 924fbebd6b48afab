"""Sandbox modes: weak modes are refused unless allowed, and keep their promises when
allowed (forced with ``PHI_RAY_SANDBOX_MODE`` or ``mode=``, as on a host without root
or without user namespaces)."""

from __future__ import annotations

import os
import signal

import pytest

from phi_ray.config import load_config
from phi_ray.evaluate.execute import sandbox_from_config
from phi_ray.sandbox import Limits, Sandbox, Script, WeakSandboxError
from phi_ray.sandbox.jail import landlock_abi
from phi_ray.synth import sandbox as synth_sandbox
from tests.sandbox.kit import MODE, RIGHT, WRONG, job
from tests.sandbox.test_verdict_forgery import FORGERIES

UNMOUNT = (
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "for p in (b'/tmp', b'/proc', b'/usr', b'/'):\n"
    "    assert libc.umount2(p, 2) != 0, p\n"
    "assert libc.mount(b'none', b'/', None, 32 | 4096, None) != 0\n"
)
LIMITS = Limits(timeout_s=3.0, memory_mb=256, max_procs=16, max_file_mb=4)
needs_strong = pytest.mark.skipif(MODE != "strong", reason="host gives no strong mode")


@needs_strong
@pytest.mark.parametrize(
    ("mode", "names"), [("userns", ["root"]), ("none", ["root", "user namespaces"])]
)
def test_weak_modes_are_refused_naming_what_is_missing(mode, names, monkeypatch):
    if mode == "none" and landlock_abi() < 6:
        names = ["Landlock"]
    with pytest.raises(WeakSandboxError) as e:
        Sandbox(LIMITS, parallel=1, mode=mode)
    for n in names:
        assert n in str(e.value)
    # The stages refuse the same way when the mode is forced from outside.
    monkeypatch.setenv("PHI_RAY_SANDBOX_MODE", mode)
    cfg = load_config("tiny", ["evaluate.parallel=1"])
    with pytest.raises(WeakSandboxError):
        sandbox_from_config(cfg.evaluate)
    with pytest.raises(WeakSandboxError):
        synth_sandbox.run_examples('def f():\n    """\n    >>> 1\n    1\n    """\n')


@needs_strong
@pytest.mark.parametrize("mode", ["userns", "none"])
def test_allowed_weak_modes_keep_verdicts_env_and_signals(mode, monkeypatch):
    if mode == "none" and landlock_abi() < 6:
        pytest.skip("no Landlock signal scoping on this kernel")
    monkeypatch.setenv("PHI_RAY_TEST_SECRET", "sk-do-not-leak")
    hits = []
    old = signal.signal(signal.SIGUSR1, lambda *a: hits.append(a))
    me = os.getpid()
    probes = [
        Script("import os\nassert 'PHI_RAY_TEST_SECRET' not in str(os.environ)\n"),
        Script(
            f"import os, signal\ntry:\n    os.kill({me}, signal.SIGUSR1)\nexcept OSError:\n    pass\n"
        ),
        Script(
            f"import os\ntry:\n    d = open('/proc/{me}/environ', 'rb').read()\nexcept OSError:\n    d = b''\nassert b'PHI_RAY_TEST_SECRET' not in d\n"
        ),
    ]
    # Mounts cannot be undone (userns: the candidate's capabilities are in a namespace
    # of its own; none: Landlock forbids mounting).
    probes.append(Script(UNMOUNT))
    forged = ["os_exit_in_call", "fake_frames_on_every_fd", "always_equal_object", "frame_walk"]
    try:
        with Sandbox(LIMITS, parallel=2, mode=mode, allow_weak=True) as sb:
            assert sb.mode == mode
            res = sb.run([*probes, job(RIGHT), job(WRONG), *(job(FORGERIES[f]) for f in forged)])
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert [r.passed for r in res[:5]] == [True] * 5, res[:5]
    assert not any(r.passed for r in res[5:]), res[5:]
    assert hits == []


@needs_strong
def test_allow_weak_from_config(monkeypatch):
    monkeypatch.setenv("PHI_RAY_SANDBOX_MODE", "userns")
    cfg = load_config("tiny", ["evaluate.parallel=1", "evaluate.allow_weak_sandbox=true"])
    with sandbox_from_config(cfg.evaluate) as sb:
        assert sb.iso.mode == "userns"
        assert [r.passed for r in sb.run([job(RIGHT), job(WRONG)])] == [True, False]
