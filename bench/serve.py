"""Serving throughput and latency vs in-process ``model.generate``, in one run.

    python bench/serve.py                       # tiny model built from the tiny preset
    python bench/serve.py --model DIR --max-tokens 128 --concurrency 32

Baseline: the same model (same weights, same torch thread count as a model replica),
sequential ``model.generate`` calls in this process, greedy, the same prompts and
``max_tokens``. Served: the phi-ray Serve app over HTTP on 127.0.0.1.

Figures: generated tokens/s with ``--concurrency`` clients against the sequential
baseline (the gain from dynamic batching), and p50 latency of one client at a time
against the baseline's p50 (the cost of HTTP + Serve + the batch wait).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _prompts(n: int) -> list[str]:
    import sysconfig

    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:n]
    # The first 100-400 characters of real modules: varied prompt lengths, as real traffic.
    return [f.read_text(errors="replace")[: 100 + 37 * i % 300] for i, f in enumerate(files)]


def _tiny_model(path: str) -> None:
    from phi_ray.config import load_config
    from phi_ray.model.phi import build_model
    from phi_ray.model.tokenizer import get_tokenizer

    build_model(load_config("tiny").model, seed=0).save_pretrained(path)
    get_tokenizer().save_pretrained(path)


def in_process(model_dir: str, prompts: list[str], max_tokens: int) -> tuple[float, list[float]]:
    """Sequential greedy generate: (tokens/s, per-request latencies)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    lat, tokens = [], 0
    model.generate(torch.tensor([tok.encode(prompts[0])]), max_new_tokens=4, do_sample=False)
    t0 = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([tok.encode(p)])
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
        lat.append(time.perf_counter() - t)
        tokens += out.shape[1] - ids.shape[1]
    return tokens / (time.perf_counter() - t0), lat


def served(url: str, prompts: list[str], max_tokens: int, concurrency: int):
    """(tokens/s, per-request latencies) with ``concurrency`` clients over ``prompts``."""
    import httpx

    def one(c: httpx.Client, p: str) -> tuple[int, float]:
        t = time.perf_counter()
        body = {"model": "phi-1", "prompt": p, "max_tokens": max_tokens, "temperature": 0}
        r = c.post("/v1/completions", json=body)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"], time.perf_counter() - t

    def worker(k: int) -> list[tuple[int, float]]:
        with httpx.Client(base_url=url, timeout=600) as c:
            return [one(c, p) for p in prompts[k::concurrency]]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        res = [r for rs in pool.map(worker, range(concurrency)) for r in rs]
    wall = time.perf_counter() - t0
    return sum(t for t, _ in res) / wall, [s for _, s in res]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="HF-format model dir (default: a tiny phi built here)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=64, help="requests in the concurrent run")
    ap.add_argument("--baseline-requests", type=int, default=24)
    ap.add_argument("--latency-requests", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (= replica num_cpus)")
    ap.add_argument("--batch-wait", type=float, default=0.01, help="serve.batch_wait_timeout_s")
    ap.add_argument("--batch-wait-max", type=float, default=0.1, help="serve.batch_wait_max_s")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import ray
    import torch
    from ray import serve

    from phi_ray.config import ServeConfig
    from phi_ray.serving.app import build_app
    from phi_ray.serving.stage import wait_ready

    torch.set_num_threads(args.threads)
    model_dir = args.model or tempfile.mkdtemp(prefix="phi-ray-bench-")
    if not args.model:
        _tiny_model(model_dir)
    prompts = _prompts(max(args.requests, args.baseline_requests, args.latency_requests))
    # The baseline runs in two halves, before and after the served runs, so that a change
    # in machine load during the run does not favour either side.
    half = max(1, args.baseline_requests // 2)
    base = [in_process(model_dir, prompts[:half], args.max_tokens)]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"}
    )
    scfg = ServeConfig(
        port=port,
        max_batch_size=args.concurrency,
        num_cpus=args.threads,
        max_tokens_limit=max(1024, args.max_tokens),
        batch_wait_timeout_s=args.batch_wait,
        batch_wait_max_s=args.batch_wait_max,
    )
    serve.run(build_app(scfg, model_dir), name="bench", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url)
        served(url, prompts[: args.concurrency], 4, args.concurrency)  # warm-up
        model = serve.get_deployment_handle("CompletionModel", app_name="bench")
        before = model.status.remote().result()
        tps, _ = served(url, prompts[: args.requests], args.max_tokens, args.concurrency)
        after = model.status.remote().result()
        n_batches = max(1, after["batches"] - before["batches"])
        batch = (after["sequences"] - before["sequences"]) / n_batches
        _, lat1 = served(url, prompts[: args.latency_requests], args.max_tokens, 1)
    finally:
        serve.shutdown()
        ray.shutdown()
    base.append(in_process(model_dir, prompts[half : 2 * half], args.max_tokens))
    base_tps = statistics.mean(t for t, _ in base)
    base_lat = [x for _, lat in base for x in lat]

    p50_base, p50_1 = statistics.median(base_lat), statistics.median(lat1)
    print(
        f"\nmodel: {model_dir}  max_tokens={args.max_tokens}  torch threads={args.threads}  "
        f"cpus={os.cpu_count()}  load avg={os.getloadavg()[0]:.1f}"
    )
    print(f"{'':42}{'served':>12}{'in-process':>12}{'ratio':>8}")
    print(
        f"{f'throughput, tokens/s (c={args.concurrency} vs sequential)':42}"
        f"{tps:12.1f}{base_tps:12.1f}{tps / base_tps:7.2f}x   (target >= 3x)"
    )
    print(f"{'  mean batch size in the concurrent run':42}{batch:12.1f}")
    print(
        f"{'p50 latency, s (c=1 vs in-process)':42}"
        f"{p50_1:12.3f}{p50_base:12.3f}{p50_1 / p50_base:7.2f}x   (target <= 1.3x)"
    )


if __name__ == "__main__":
    main()
