"""The global concurrency limit and budget ledger, shared by every process of a stage.

Choice: one **named, detached Ray actor** per scope (``phi_ray.llm:<scope>`` in the
``phi_ray`` namespace), created with ``get_if_exists=True`` so that the driver and any
number of Ray Data / Ray Train workers race-free end up with the same actor. It hands out
*leases*: a slot of ``llm.max_concurrency`` plus a budget reservation, returned after each
HTTP attempt (a request waiting out a backoff holds no slot). Detached, because a named
actor owned by a worker would die with that worker and strand the others; the owning
client (the stage's driver) resets it on start and kills it on close. A lease whose holder
died (SIGKILL, node loss) expires after ``ttl_s`` (longer than any one HTTP attempt), so
a crashed worker cannot leak slots for good.

A caller killed while it *waits* for a slot leaves its ``acquire`` running in the actor
(Ray does not cancel an actor call whose caller died), and that call would later take a
slot nobody releases (the resumed stage then waited the whole TTL). So the actor never
waits long on a caller's behalf: each ``acquire`` call waits at most ``WAIT_S`` and the
client calls again, and every owner reset starts a new *generation* that wakes and
refuses the waiters of the old one. A dead waiter can hold a slot only if one freed in
the ``WAIT_S`` after its death, and then only until the owner's next reset or the TTL.

Without Ray (plain scripts, unit tests) the same core runs in-process. Rate limits that a
provider enforces per minute are left to the 429 / Retry-After handling: the server knows
its quota better than any client-side guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from typing import Any

from phi_ray.llm.budget import Ledger, Worst

NAMESPACE = "phi_ray"
WAIT_S = 1.0  # the longest one actor call waits for a slot (see the module docstring)
RETRY = "retry: no slot yet"  # acquire's reason when its wait ran out: call again
STALE = "stale: the limiter was reset"  # the caller's generation is gone: resync, call again


class LimiterCore:
    """Slots + budget ledger. Async methods; one event loop (or one actor) owns it."""

    def __init__(self) -> None:
        self.limit = 1
        self.ttl_s = 300.0
        self.ledger = Ledger()
        self.refused: str | None = None  # latched: once a budget stops, everyone stops
        self.active: dict[str, tuple[float, tuple[int, float]]] = {}
        self.configured = False
        self.generation = 0  # bumped by every owner reset
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    async def configure(
        self,
        limit: int,
        ttl_s: float,
        max_tokens: int | None,
        max_usd: float | None,
        spent: tuple[int, float],
        reset: bool,
        out_ratio: float | None = None,
    ) -> int:
        """Set limits; ``reset`` (the owner, at stage start) also clears spend and leases
        and starts a new generation. ``out_ratio``: what the cache's history says about
        answers past max_tokens. Returns the generation the caller's acquires carry."""
        if self.configured and not reset:
            return self.generation
        self.limit, self.ttl_s = limit, ttl_s
        self.ledger = Ledger(max_tokens, max_usd, spent[0], spent[1])
        if out_ratio is not None:
            self.ledger.out_ratio = max(1.0, out_ratio)
            self.ledger.calibrated = True
        self.refused, self.active, self.configured = None, {}, True
        self.generation += 1
        cond = self._condition()
        async with cond:
            cond.notify_all()  # the old generation's waiters (maybe dead callers) give up
        return self.generation

    def _reap(self) -> None:
        now = time.monotonic()
        for lease, (t0, reserved) in list(self.active.items()):
            if now - t0 > self.ttl_s:  # holder died mid-call: free its slot and reservation
                del self.active[lease]
                self.ledger.settle(reserved, 0, 0.0)

    def _slots(self) -> int:
        # A capped ledger that has not seen a real answer yet runs one call at a time: a
        # server that ignores max_tokens is found out by one answer, not by a whole wave.
        led = self.ledger
        return 1 if led.capped and not led.calibrated else self.limit

    async def acquire(
        self, worst: Worst, generation: int | None = None, wait_s: float | None = None
    ) -> tuple[str | None, str | None]:
        """Wait for a slot and reserve the call's worst case: (lease, None), or (None, why
        refused). With ``wait_s``, (None, RETRY) once that long passed without a slot; with
        ``generation``, (None, STALE) once an owner reset made it old."""
        cond = self._condition()
        deadline = None if wait_s is None else time.monotonic() + wait_s
        async with cond:
            while True:
                if generation is not None and generation != self.generation:
                    return None, STALE
                if self.refused:
                    return None, self.refused
                self._reap()
                if len(self.active) < self._slots():
                    break
                left = 1.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return None, RETRY
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(cond.wait(), timeout=min(1.0, left))
            tokens, usd = self.ledger.worst(worst)
            why = self.ledger.refusal(tokens, usd)
            if why is not None:
                self.refused = why
                cond.notify_all()
                return None, why
            self.ledger.reserve(tokens, usd)
            lease = uuid.uuid4().hex
            self.active[lease] = (time.monotonic(), (tokens, usd))
            return lease, None

    async def release(
        self, lease: str, tokens: int, usd: float, ratio: float | None = None
    ) -> None:
        """Return a slot; settle its reservation with what the call really cost."""
        cond = self._condition()
        async with cond:
            held = self.active.pop(lease, None)
            reserved = held[1] if held else (0, 0.0)
            was = self.ledger.calibrated
            self.ledger.settle(reserved, tokens, usd, ratio)
            if self.ledger.calibrated and not was:
                cond.notify_all()  # every slot opens at once
            else:
                cond.notify(1)

    async def current_generation(self) -> int:
        return self.generation

    async def snapshot(self) -> dict[str, Any]:
        led = self.ledger
        return {
            "limit": self.limit,
            "active": len(self.active),
            "spent_tokens": led.spent_tokens,
            "spent_usd": led.spent_usd,
            "reserved_tokens": led.reserved_tokens,
            "out_ratio": led.out_ratio,
            "refused": self.refused,
            "generation": self.generation,
        }


class LocalLimiter:
    """In-process limiter (no Ray): the core, called directly."""

    kind = "local"

    def __init__(self) -> None:
        self.core = LimiterCore()

    async def configure(self, *args: Any) -> None:
        await self.core.configure(*args)

    async def acquire(self, worst: Worst) -> tuple[str | None, str | None]:
        return await self.core.acquire(worst)

    async def release(self, lease: str, tokens: int, usd: float, ratio: float | None) -> None:
        await self.core.release(lease, tokens, usd, ratio)

    async def snapshot(self) -> dict[str, Any]:
        return await self.core.snapshot()

    def close(self) -> None:
        pass


class RayLimiter:
    """The core in a named detached actor; ``owner`` kills it on close."""

    kind = "ray"

    def __init__(self, scope: str, owner: bool) -> None:
        import ray

        actor_cls = ray.remote(num_cpus=0, max_concurrency=4096)(LimiterCore)
        self.name = f"phi_ray.llm:{scope}"
        self.owner = owner
        self.handle = actor_cls.options(
            name=self.name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
        ).remote()
        self.generation: int | None = None

    async def configure(self, *args: Any) -> None:
        self.generation = await self.handle.configure.remote(*args)

    async def acquire(self, worst: Worst) -> tuple[str | None, str | None]:
        # Short calls, repeated: a call the actor holds must not outlive its caller by much.
        while True:
            lease, why = await self.handle.acquire.remote(worst, self.generation, WAIT_S)
            if why == STALE:  # another owner reset it (a resumed stage): join the new one
                self.generation = await self.handle.current_generation.remote()
            elif why != RETRY:
                return lease, why

    async def release(self, lease: str, tokens: int, usd: float, ratio: float | None) -> None:
        # Fire and forget: the caller need not wait a round trip to go on.
        self.handle.release.remote(lease, tokens, usd, ratio)

    async def snapshot(self) -> dict[str, Any]:
        return await self.handle.snapshot.remote()

    def close(self) -> None:
        if self.owner:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(self.handle)


def ray_ready() -> bool:
    """Ray is imported and initialised in this process (never imports Ray itself)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def make_limiter(scope: str, owner: bool, use_ray: bool | None) -> LocalLimiter | RayLimiter:
    """A Ray-actor limiter when Ray is initialised (or ``use_ray``), else a local one."""
    if use_ray is None:
        use_ray = ray_ready()
    return RayLimiter(scope, owner) if use_ray else LocalLimiter()
