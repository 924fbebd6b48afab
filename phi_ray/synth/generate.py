"""LLM generation of textbooks and exercises through :mod:`phi_ray.llm`.

Every request carries its sample index as the cache salt, so two samples that happen to
draw the same constraints still get two answers, and a rerun (after a crash, or with a
larger ``n``) gets every answer it already paid for back from the stage's cache.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from phi_ray.synth import prompts
from phi_ray.synth.topics import Sample, TopicTree

log = logging.getLogger("phi_ray.synth")

KIND_SINGULAR = {"textbooks": "textbook", "exercises": "exercise"}


def build_requests(
    tree: TopicTree, kind: str, start: int, stop: int, seed: int, synth: Any, model: str
):
    """Requests for samples ``start..stop-1`` of ``kind``, with their constraints as meta."""
    from phi_ray.llm import Request

    make = prompts.textbook_messages if kind == "textbooks" else prompts.exercise_messages
    # temperature and max_tokens sit in the request itself, so the cache key the client
    # computes is reproducible here (see :func:`paid_for`).
    params = {"temperature": synth.temperature, "max_tokens": synth.max_tokens}
    out = []
    for i in range(start, stop):
        s: Sample = tree.sample(seed, kind, i)
        messages = make(s)
        out.append(
            Request(
                id=f"{kind}-{i:08d}",
                messages=messages,
                params=params,
                prompt_version=prompts.PROMPT_VERSION,
                cache_salt=f"{kind}:{i}",
                model=model,
                meta={
                    "sample_index": i,
                    "category": s.category,
                    "topic": s.topic,
                    "subtopic": s.subtopic,
                    "audience": s.audience,
                    "style": s.style,
                    "angle": s.angle,
                    "func_name": s.func_name,
                    "prompt_hash": prompts.prompt_hash(messages, model),
                },
            )
        )
    return out


def paid_for(client: Any, req: Any, model: str) -> tuple[int, int, float]:
    """(prompt tokens, completion tokens, USD) this answer cost when it was first paid.

    A cached answer costs nothing in this session, but its row's provenance still says
    what producing it cost; the cache keeps that per request.
    """
    hit = client.cached_answer(req)  # the client's key: endpoint, model and parameters
    if hit is None:
        return 0, 0, 0.0
    return hit.prompt_tokens, hit.completion_tokens, hit.cost_usd


def generate_chunk(
    client: Any,
    tree: TopicTree,
    kind: str,
    start: int,
    stop: int,
    seed: int,
    synth: Any,
    model: str,
) -> tuple[list[dict[str, Any]], Counter, dict[str, Any]]:
    """(records, failure reasons, batch stats) for samples ``start..stop-1`` of ``kind``.

    A budget stop raises :class:`phi_ray.llm.BudgetExceeded` after the chunk's paid
    answers are cached, so a rerun with a larger budget carries on from there.
    """
    reqs = build_requests(tree, kind, start, stop, seed, synth, model)
    by_id = {r.id: r for r in reqs}
    batch = client.run_batch(reqs, desc=f"synth {kind} {start}-{stop}")
    batch.raise_if_budget(f"synth {kind}")
    records = []
    for res in batch.results:
        pt, ct, usd = paid_for(client, by_id[res.id], model)
        records.append(
            {
                **res.meta,
                "text": res.text,
                "model": res.model,
                "prompt_tokens": pt,
                "completion_tokens": ct,
                "cost_usd": usd,
                "cached": res.cached,
            }
        )
    reasons = Counter(f"llm_{f.reason}" for f in batch.failures)
    for f in batch.failures:
        log.warning("synth %s: request %s failed (%s): %s", kind, f.id, f.reason, f.error[:200])
    return records, reasons, batch.stats
