"""A real process that answers prompts through LLMClient (for kill and two-process tests).

    python tests/llm/llm_worker.py BASE_URL CACHE_DIR N CONCURRENCY OUT_JSON [TIMEOUT_S]

asks ``q0 .. q{N-1}`` (chat, one user message each) and writes a JSON summary to OUT_JSON:
results, failures and the batch stats. Tests SIGKILL it mid-run, or run two at once.
"""

from __future__ import annotations

import json
import sys

from phi_ray.config import LLMConfig
from phi_ray.llm import LLMClient, Request


def prompts(n: int) -> list[Request]:
    return [Request(f"q{i}", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(n)]


def main(argv: list[str]) -> None:
    base_url, cache, n, conc, out = argv[:5]
    timeout = float(argv[5]) if len(argv) > 5 else 60.0
    cfg = LLMConfig(
        base_url=base_url,
        model="gpt-4",
        max_concurrency=int(conc),
        timeout_s=timeout,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        max_tokens=16,
    )
    with LLMClient(cfg, cache, progress=False, use_ray=False) as llm:
        print("ready", flush=True)  # tests may hold the server's answers until both are
        batch = llm.run_batch(prompts(int(n)))
    summary = {
        "results": len(batch.results),
        "failures": [f.to_json() for f in batch.failures],
        "stats": {k: v for k, v in batch.stats.items() if isinstance(v, (int, float))},
    }
    with open(out, "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1:])
