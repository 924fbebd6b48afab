"""The Ray limiter actor when a caller dies while it waits for a slot.

Ray does not cancel an actor call whose caller died: before the fix, a SIGKILLed worker's
pending ``acquire`` later took the slot a live process released, and nobody ever returned
it, so a resumed stage stalled for the whole lease TTL (minutes).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from phi_ray.llm.budget import Worst
from phi_ray.llm.limiter import RayLimiter

HERE = Path(__file__).resolve().parent
TTL_S = 600.0  # far longer than the test: only a fix, not the TTL, can pass it


def _configure(lim: RayLimiter) -> None:
    asyncio.run(lim.configure(1, TTL_S, None, None, (0, 0.0), True, None))


def _acquire(lim: RayLimiter, within_s: float) -> str:
    lease, why = asyncio.run(asyncio.wait_for(lim.acquire(Worst(10, 10)), within_s))
    assert lease is not None, why
    return lease


def _release(lim: RayLimiter, lease: str) -> None:
    asyncio.run(lim.release(lease, 20, 0.0, None))


def test_a_killed_waiter_never_takes_a_slot_from_the_resumed_stage(ray_session):
    scope = f"test-{uuid.uuid4().hex[:8]}"
    first = RayLimiter(scope, owner=True)  # the stage's driver, about to be killed
    try:
        _configure(first)
        held = _acquire(first, 30)  # the only slot: the worker below must wait
        waiter = subprocess.Popen(
            [sys.executable, str(HERE / "limiter_waiter.py"),
             ray_session.get_runtime_context().gcs_address, scope],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            assert waiter.stdout.readline().strip() == "waiting"
            time.sleep(1.5)  # its acquire is now running in the actor, waiting
            assert waiter.poll() is None
            os.killpg(waiter.pid, signal.SIGKILL)
            waiter.wait()
        finally:
            if waiter.poll() is None:
                os.killpg(waiter.pid, signal.SIGKILL)
        # The held lease dies with the stage (never released); the rerun resets as owner.
        del held
        resumed = RayLimiter(scope, owner=True)
        _configure(resumed)
        t0 = time.monotonic()
        for _ in range(4):  # the dead waiter wakes every second: give it every chance
            lease = _acquire(resumed, 10)
            time.sleep(1.2)
            _release(resumed, lease)
            time.sleep(0.3)
        assert time.monotonic() - t0 < 30
        snap = ray_session.get(resumed.handle.snapshot.remote())
        assert snap["active"] == 0 and snap["generation"] == 2
    finally:
        first.close()  # the owner kills the detached actor
