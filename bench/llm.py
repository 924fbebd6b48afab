"""LLM client throughput against the local test server: requests/s as a fraction of ideal.

With ``--latency`` 0.2 s per answer and ``--concurrency`` 32, the ideal is 32 / 0.2 = 160
requests/s. Measured in the same run, against the same server:

- ``raw``: the bare ``openai.AsyncOpenAI`` client under an ``asyncio.Semaphore`` (baseline:
  what the HTTP stack alone achieves here);
- ``phi-ray``: :class:`phi_ray.llm.LLMClient` (SQLite cache writes, limiter, accounting,
  parsing), in-process limiter;
- ``phi-ray+ray`` (``--ray``): the same with the global limiter as a Ray actor;
- ``cached``: a rerun of the same requests, all answered from the cache.

The server runs in its own process, as a real endpoint would.

Target: phi-ray >= 0.8 of ideal. Run: ``python bench/llm.py [--n 960] [--ray]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import tempfile
import time

import openai

from phi_ray.config import LLMConfig
from phi_ray.llm import LLMClient, Request
from phi_ray.llm.testserver import OpenAITestServer


def _responder(kind: str, body: dict) -> str:
    return json.dumps({"score": len(body["messages"][-1]["content"]) % 6})


def _serve(latency: float, urls: mp.Queue, stop: mp.Event, paid: mp.Queue) -> None:
    """The test server in its own process, as a real endpoint would be (no shared GIL)."""
    with OpenAITestServer(_responder, latency_s=latency) as srv:
        urls.put(srv.base_url)
        stop.wait()
        paid.put(max(srv.paid.values(), default=0))


def _requests(n: int, tag: str) -> list[Request]:
    return [
        Request(f"{tag}{i}", messages=[{"role": "user", "content": f"{tag} {i}"}]) for i in range(n)
    ]


async def _raw(url: str, n: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": f"raw {i}"}], max_tokens=16
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    dt = time.perf_counter() - t0
    await client.close()
    return dt


def _client_run(cfg: LLMConfig, n: int, tag: str, use_ray: bool, cache: str) -> tuple[float, float]:
    reqs = _requests(n, tag)
    with LLMClient(cfg, cache, progress=False, use_ray=use_ray) as llm:
        t0 = time.perf_counter()
        batch = llm.run_batch(reqs, json.loads)
        first = time.perf_counter() - t0
        assert len(batch.results) == n, batch.failures[:3]
        t0 = time.perf_counter()
        again = llm.run_batch(reqs, json.loads)
        cached = time.perf_counter() - t0
        assert again.stats["cache_hits"] == n
    return first, cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=960, help="requests per measurement")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--ray", action="store_true", help="also measure the Ray-actor limiter")
    args = ap.parse_args()
    ideal = args.concurrency / args.latency
    rows: list[tuple[str, float]] = []
    cpu: dict[
        str, float
    ] = {}  # client-process CPU seconds (the phi-ray figure includes the cached rerun)
    ctx = mp.get_context("spawn")
    urls, paid, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve, args=(args.latency, urls, stop, paid), daemon=True)
    server.start()
    url = urls.get(timeout=60)
    cfg = LLMConfig(base_url=url, max_concurrency=args.concurrency, max_tokens=16)
    c0 = time.process_time()
    raw_s = asyncio.run(_raw(url, args.n, args.concurrency))
    cpu["raw openai + semaphore"] = time.process_time() - c0
    rows.append(("raw openai + semaphore", args.n / raw_s))
    with tempfile.TemporaryDirectory() as d:
        c0 = time.process_time()
        first, cached = _client_run(cfg, args.n, "local", False, d)
        cpu["phi-ray client (local limiter)"] = time.process_time() - c0
    rows.append(("phi-ray client (local limiter)", args.n / first))
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        with tempfile.TemporaryDirectory() as d:
            first_ray, _ = _client_run(cfg, args.n, "ray", True, d)
        ray.shutdown()
        rows.append(("phi-ray client (Ray actor limiter)", args.n / first_ray))
    stop.set()
    assert paid.get(timeout=30) == 1, "a call was paid twice"
    server.join(10)
    base = rows[0][1]
    print(
        f"ideal: {ideal:.1f} req/s ({args.concurrency} concurrent, {args.latency * 1000:.0f} ms each), n={args.n}"
    )
    print(f"{'client':38s} {'req/s':>8s} {'of ideal':>9s} {'vs raw':>7s} {'CPU ms/req':>10s}")
    for name, rps in rows:
        c = f"{cpu[name] / args.n * 1000:10.2f}" if name in cpu else f"{'-':>10s}"
        print(f"{name:38s} {rps:8.1f} {rps / ideal:9.2f} {rps / base:7.2f} {c}")
    print(f"{'cached rerun (no HTTP)':38s} {args.n / cached:8.1f}")
    ok = rows[1][1] / ideal >= 0.8
    print(f"target phi-ray >= 0.80 of ideal: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
