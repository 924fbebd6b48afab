"""The HTTP ingress: an OpenAI-compatible FastAPI app in front of the model and classifier.

It validates and tokenizes every request itself (with the served model's own tokenizer),
so a bad request is answered here with a 4xx and never reaches a model replica; it then
fans a request's prompts out to the model deployment (one call per prompt, ``n``
sequences each) and assembles OpenAI responses, or server-sent events when ``stream``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve

from phi_ray.serving.engine import SeqEvent, SeqSpec
from phi_ray.serving.errors import (
    APIError,
    APIKeyMiddleware,
    BodyLimitMiddleware,
    ModelUnavailable,
    install_error_handlers,
)

MAX_STOP = 4


@dataclass
class IngressSettings:
    """What the ingress needs to know about the served model and its limits."""

    model_name: str
    model_dir: str
    max_tokens_limit: int
    max_n: int  # n per prompt: at most one batch
    max_prompts: int
    max_quality_codes: int
    max_body_bytes: int
    api_key_env: str
    classifier_dir: str | None = None


@dataclass
class _Job:
    """A validated completion request: one SeqSpec list per prompt."""

    prompts: list[str]
    specs: list[list[SeqSpec]]
    prompt_tokens: int
    echo: bool
    include_usage: bool = False


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _merge(gens: list[Any]) -> AsyncIterator[tuple[int, list[SeqEvent]]]:
    """Interleave several async generators, tagging each item with its generator's index."""
    if len(gens) == 1:
        async for item in gens[0]:
            yield 0, item
        return
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(p: int, gen: Any) -> None:
        try:
            async for item in gen:
                await queue.put((p, item))
            await queue.put((p, end))
        except Exception as e:
            await queue.put((p, e))

    tasks = [asyncio.create_task(pump(p, g)) for p, g in enumerate(gens)]
    left = len(gens)
    try:
        while left:
            p, item = await queue.get()
            if item is end:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield p, item
    finally:
        for t in tasks:
            t.cancel()


def _unavailable(e: Exception) -> APIError | None:
    if isinstance(e, ModelUnavailable):
        cause = getattr(e, "cause", None) or e
        return APIError(503, str(cause.args[0] if cause.args else cause), code="unavailable")
    return None


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    """Routes: /v1/completions, /v1/chat/completions, /v1/models, /v1/quality, /healthz."""

    def __init__(self, model: Any, scorer: Any | None, settings: IngressSettings) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.model, self.scorer, self.s = model, scorer, settings
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model_dir)
        self.context = int(AutoConfig.from_pretrained(settings.model_dir).max_position_embeddings)
        self.api_key = os.environ.get(settings.api_key_env) or None
        self.created = int(time.time())

    # ----------------------------------------------------------------------- validation
    def _check_model(self, name: str) -> None:
        if name != self.s.model_name:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{self.s.model_name}'",
                param="model",
                code="model_not_found",
            )

    def _stops(self, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP:
            raise APIError(400, f"at most {MAX_STOP} stop sequences", param="stop")
        return [s for s in stops if s]

    def _job(self, prompts: list[str], body: Any, max_tokens: int | None, echo: bool) -> _Job:
        if not prompts:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        if len(prompts) > self.s.max_prompts:
            raise APIError(400, f"at most {self.s.max_prompts} prompts per request", "prompt")
        if body.n > self.s.max_n:
            raise APIError(400, f"n must be <= {self.s.max_n}", param="n")
        stops = self._stops(body.stop)
        ids_list = []
        for i, p in enumerate(prompts):
            if not p:
                raise APIError(
                    400, "prompt must not be empty", param="prompt" + f"[{i}]" * (len(prompts) > 1)
                )
            ids_list.append(self.tokenizer.encode(p))
        longest = max(len(x) for x in ids_list)
        room = self.context - longest
        if max_tokens is None:  # chat default: as much as fits, up to the limit
            max_tokens = max(1, min(self.s.max_tokens_limit, room))
        if max_tokens > self.s.max_tokens_limit:
            raise APIError(
                400, f"max_tokens must be <= {self.s.max_tokens_limit}", param="max_tokens"
            )
        if longest + max_tokens > self.context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.context} tokens, however you "
                f"requested {longest + max_tokens} tokens ({longest} in your prompt; "
                f"{max_tokens} for the completion). Please reduce your prompt or completion.",
                param="prompt" if longest >= self.context else "max_tokens",
                code="context_length_exceeded",
            )
        specs = [
            [
                SeqSpec(
                    prompt_ids=ids,
                    max_tokens=max_tokens,
                    temperature=body.temperature,
                    top_p=body.top_p,
                    stop=stops,
                    seed=None if body.seed is None else (body.seed + j) % 2**63,
                )
                for j in range(body.n)
            ]
            for ids in ids_list
        ]
        opts = getattr(body, "stream_options", None) or {}
        usage = bool(opts.get("include_usage")) if isinstance(opts, dict) else False
        return _Job(prompts, specs, sum(len(x) for x in ids_list), echo, usage)

    # ----------------------------------------------------------------------- calls
    async def _call(self, response: Any) -> Any:
        """Await a deployment call; a replica that is not ready becomes a 503."""
        try:
            return await response
        except Exception as e:
            raise _unavailable(e) or e from None

    async def _complete(self, job: _Job) -> list[SeqEvent]:
        outs = await asyncio.gather(*(self._call(self.model.complete.remote(s)) for s in job.specs))
        return [ev for out in outs for ev in out]

    async def _events(self, job: _Job) -> AsyncIterator[tuple[int, SeqEvent]]:
        """(choice index, event) pairs; the first one is awaited before streaming starts."""
        gens = [self.model.options(stream=True).stream.remote(s) for s in job.specs]
        n = len(job.specs[0])
        merged = _merge(gens)
        try:
            first = await anext(merged)
        except Exception as e:
            raise _unavailable(e) or e from None

        async def chain() -> AsyncIterator[tuple[int, SeqEvent]]:
            for p, events in [first]:
                for ev in events:
                    yield p * n + ev.seq, ev
            async for p, events in merged:
                for ev in events:
                    yield p * n + ev.seq, ev

        return chain()

    def _usage(self, job: _Job, events: list[SeqEvent] | int) -> dict[str, int]:
        done = events if isinstance(events, int) else sum(e.n_tokens for e in events)
        return {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": job.prompt_tokens + done,
        }

    async def _stream(self, job: _Job, chunk: Any) -> StreamingResponse:
        """SSE: ``chunk(index, text, finish)`` builds each event's JSON object."""
        events = await self._events(job)
        n = len(job.specs[0])

        async def body() -> AsyncIterator[str]:
            tokens: dict[int, int] = {}
            try:
                if job.echo:
                    for i in range(len(job.prompts) * n):
                        yield _sse(chunk(i, job.prompts[i // n], None))
                async for i, ev in events:
                    tokens[i] = ev.n_tokens
                    yield _sse(chunk(i, ev.text, ev.finish_reason))
                if job.include_usage:
                    last = chunk(0, "", None)
                    last["choices"], last["usage"] = [], self._usage(job, sum(tokens.values()))
                    yield _sse(last)
            except Exception as e:  # the stream has started: report in-band, then end it
                api = _unavailable(e)
                msg = api.message if api else f"internal error: {type(e).__name__}"
                yield _sse({"error": {"message": msg, "type": "server_error"}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    # ----------------------------------------------------------------------- the app
    def __serve_build_asgi_app__(self) -> FastAPI:
        from phi_ray import __version__
        from phi_ray.serving import routes

        app = FastAPI(
            title="phi-ray",
            version=__version__,
            description="OpenAI-compatible code completion with phi-1, and the quality "
            "classifier of the phi-1 data pipeline.",
        )
        install_error_handlers(app)
        routes.add_routes(app, self)
        app.add_middleware(APIKeyMiddleware, api_key=self.api_key)
        app.add_middleware(BodyLimitMiddleware, max_bytes=self.s.max_body_bytes)
        return app
