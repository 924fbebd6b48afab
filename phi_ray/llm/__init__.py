"""The one client layer every LLM call in phi-ray goes through (annotation, synthesis, grading).

It speaks to any OpenAI-compatible endpoint (``llm.base_url``: OpenAI, vLLM, phi-ray's own
Serve app) with the ``openai`` package's async client, and adds what paid, rate-limited
calls at scale need:

- **a response cache** (SQLite at ``run.work_path(stage)/llm_cache.sqlite``), keyed by a
  hash of (endpoint, model, messages / prompt, parameters, prompt version, salt). Each
  request leaves a write-ahead record with a lease before it is sent, and each answer's
  raw body is committed the moment it arrives, before it is parsed: after a SIGKILL a
  rerun pays again only for what was in flight, and says how many those were. Processes
  sharing the file wait for each other's leases instead of paying twice (a dead owner's
  lease is taken over). Object-store runs keep a local working copy synced to the run's
  ``.work/<stage>/`` (:mod:`phi_ray.llm.sync`);
- **a global concurrency limit** (``llm.max_concurrency``) that holds across every Ray
  worker of a stage: a named detached Ray actor when Ray is initialised, else in-process
  (see :mod:`phi_ray.llm.limiter` for why);
- **retries** with exponential backoff and jitter on 429 (honouring ``Retry-After``),
  408/409, 5xx, timeouts and connection errors, at most ``llm.max_attempts`` HTTP
  attempts. A billed 200 is never re-requested: missing usage is estimated from above,
  and a body nobody can read is kept as a parse failure for the repair path.
  401/403/404 stop new calls, let those in flight land in the cache, then raise
  :class:`LLMError`;
- **budgets** in tokens and dollars (``llm.budget_tokens`` / ``llm.budget_usd``, prices
  per model in ``llm.prices``; an unpriced model under a dollar budget is an error),
  counted over everything the cache has paid for. Each call reserves its worst case
  (prompt bounded by its UTF-8 bytes, plus ``max_tokens``, scaled up once the endpoint has
  answered past ``max_tokens``) and settles on real usage; a budget stops new calls
  cleanly, and a rerun with a larger budget finishes the rest;
- **accounting** of tokens, dollars, cache hits and retries, live on a tqdm bar and in
  :attr:`BatchResult.stats` (put it into ``_SUCCESS.json``);
- **parse and repair**: an answer the caller's parser rejects is re-asked with a repair
  prompt (chat only, ``llm.repair_attempts`` times); what still fails comes back as a
  :class:`Failure` with its reason, never dropped.

How a stage uses it (synchronous; fine in a driver loop or a Ray Data UDF)::

    from phi_ray.llm import LLMClient, ParseError, Request

    def parse(text: str) -> int:                      # raise to reject (-> repair prompt)
        if not text.strip().isdigit():
            raise ParseError("answer with a single integer")
        return int(text)

    requests = [
        Request(id=row_id, messages=[{"role": "user", "content": prompt}],
                prompt_version="rubric-v1", params={"max_tokens": 64})
        for row_id, prompt in items
    ]
    with LLMClient(cfg.llm, cache_dir=run.work_path("annotate"), model=cfg.annotate.model) as llm:
        batch = llm.run_batch(requests, parser=parse, desc="annotate")
    batch.results    # [Result(id, value, text, prompt_tokens, completion_tokens, cost_usd, cached, ...)]
    batch.failures   # [Failure(id, reason, error, text)] -> write them to failures.jsonl
    batch.pending    # ids a budget stopped before they ran (empty unless stopped)
    batch.stats      # {"api_calls", "cache_hits", "retries", "prompt_tokens", "cost_usd", ...}
    batch.raise_if_budget("annotate")   # BudgetExceeded(counts) when a budget stopped it

``Request(prompt=...)`` uses ``/v1/completions`` instead of chat. Async code can
``await llm.arun(requests, parser)`` or ``await llm.acomplete(request, parser)``.
Inside Ray workers that join a driver's client, pass ``scope=<driver's llm.scope>,
attach=True`` so they share its limiter and budget. :func:`run_batch` is a one-shot
shorthand. Tests and benchmarks use :class:`phi_ray.llm.testserver.OpenAITestServer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from phi_ray.llm.budget import cost_usd, find_price
from phi_ray.llm.client import LLMClient
from phi_ray.llm.types import (
    BatchResult,
    BudgetExceeded,
    Failure,
    LLMError,
    ParseError,
    Parser,
    Request,
    Result,
)

__all__ = [
    "BatchResult",
    "BudgetExceeded",
    "Failure",
    "LLMClient",
    "LLMError",
    "ParseError",
    "Parser",
    "Request",
    "Result",
    "cost_usd",
    "find_price",
    "run_batch",
]


def run_batch(
    cfg: Any,
    requests: Sequence[Request],
    parser: Parser | None = None,
    cache_dir: str | None = None,
    desc: str = "llm",
    **client_kwargs: Any,
) -> BatchResult:
    """Open an :class:`LLMClient` on ``cfg`` (an ``LLMConfig``), answer ``requests``, close it."""
    with LLMClient(cfg, cache_dir, **client_kwargs) as llm:
        return llm.run_batch(requests, parser, desc)
