"""A worker that joins a stage's limiter and waits for a slot: the test SIGKILLs it there.

Run as ``python limiter_waiter.py <ray address> <scope>``; prints ``waiting`` just before
its ``acquire`` (which blocks: the test holds the only slot).
"""

from __future__ import annotations

import asyncio
import sys

import ray

from phi_ray.llm.budget import Worst
from phi_ray.llm.limiter import RayLimiter


async def main(scope: str) -> None:
    lim = RayLimiter(scope, owner=False)
    await lim.configure(1, 600.0, None, None, (0, 0.0), False, None)
    print("waiting", flush=True)
    lease, why = await lim.acquire(Worst(10, 10))
    print("acquired", lease, why, flush=True)  # only if the test failed to keep it waiting


if __name__ == "__main__":
    ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
    asyncio.run(main(sys.argv[2]))
