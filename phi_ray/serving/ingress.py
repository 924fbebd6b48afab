"""The HTTP ingress: an OpenAI-compatible FastAPI app in front of the model and classifier.

It validates and tokenizes every request itself (with the served model's own tokenizer),
so a bad request is answered here with a 4xx and never reaches a model replica; it then
fans a request's sequences (prompts x ``n``) out to the model deployment in calls of at
most one batch each, and assembles OpenAI responses, or server-sent events when
``stream``.
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

from phi_ray.serving.engine import SeqEvent
from phi_ray.serving.errors import (
    APIError,
    APIKeyMiddleware,
    BodyLimitMiddleware,
    ModelUnavailable,
    install_error_handlers,
)
from phi_ray.serving.metrics import Metrics, MetricsMiddleware
from phi_ray.serving.protocol import (
    Job,
    Limits,
    TokenText,
    build_job,
    encode_prompts,
    format_logprobs,
)
from phi_ray.serving.schemas import lone_surrogate


@dataclass
class IngressSettings:
    """What the ingress needs to know about the served model and its limits."""

    model_name: str
    model_dir: str
    max_tokens_limit: int
    max_n: int  # choices per prompt
    batch: int  # sequences per model call (the model's max batch size)
    max_prompts: int
    max_stops: int
    max_quality_codes: int
    max_body_bytes: int
    api_key_env: str
    classifier_dir: str | None = None


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
    """OpenAI- and vLLM-compatible routes (``routes.py``) in front of the model and classifier."""

    def __init__(self, model: Any, scorer: Any | None, settings: IngressSettings) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from phi_ray.train.data import localize

        self.model, self.scorer, self.s = model, scorer, settings
        model_dir = localize(settings.model_dir)  # an object-store model: this node's copy
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.context = int(AutoConfig.from_pretrained(model_dir).max_position_embeddings)
        self.limits = Limits(
            context=self.context,
            vocab=len(self.tokenizer),
            max_tokens=settings.max_tokens_limit,
            max_n=settings.max_n,
            max_prompts=settings.max_prompts,
            max_stops=settings.max_stops,
            batch=settings.batch,
        )
        self.token_text = TokenText(self.tokenizer)
        self.metrics = Metrics()
        self.api_key = os.environ.get(settings.api_key_env) or None
        self.created = int(time.time())

    # ----------------------------------------------------------------------- validation
    def check(self, body: Any) -> None:
        """What every request body gets before anything reads it: text that is Unicode,
        only parameters this server implements, and the served model's name."""
        if (where := lone_surrogate(body)) is not None:
            raise APIError(
                400, f"{where} contains a lone surrogate: it is not valid Unicode text", where
            )
        if bad := body.unsupported():
            raise APIError(
                400,
                f"not implemented by this server: {', '.join(bad)} (only its neutral value "
                "is accepted)",
                param=bad[0],
                code="unsupported_parameter",
            )
        name = getattr(body, "model", None)
        if name is not None and name != self.s.model_name:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{self.s.model_name}'",
                param="model",
                code="model_not_found",
            )

    def completion_job(self, body: Any) -> Job:
        ids, texts = encode_prompts(body.prompt, self.tokenizer, self.limits)
        return build_job(body, ids, texts, self.limits, body.max_tokens, body.echo, body.logprobs)

    def chat_job(self, body: Any) -> Job:
        prompt = "\n".join(m.content for m in body.messages)
        if not prompt.strip():
            raise APIError(400, "messages must not all be empty", param="messages")
        ids, texts = encode_prompts(prompt, self.tokenizer, self.limits)
        max_tokens = body.max_completion_tokens or body.max_tokens
        return build_job(body, ids, texts, self.limits, max_tokens)

    # ----------------------------------------------------------------------- calls
    async def call(self, response: Any) -> Any:
        """Await a deployment call; a replica that is not ready becomes a 503."""
        try:
            return await response
        except Exception as e:
            raise _unavailable(e) or e from None

    async def complete(self, job: Job) -> list[SeqEvent]:
        """One final event per choice (choice index = position in the list)."""
        outs = await asyncio.gather(
            *(self.call(self.model.complete.remote(specs)) for _, specs in job.calls)
        )
        events = [ev for out in outs for ev in out]
        self.metrics.tokens(job.prompt_tokens, sum(e.n_tokens for e in events))
        return events

    async def _events(self, job: Job) -> AsyncIterator[tuple[int, SeqEvent]]:
        """(choice index, event) pairs; the first one is awaited before streaming starts."""
        gens = [self.model.options(stream=True).stream.remote(specs) for _, specs in job.calls]
        first_choice = [a for a, _ in job.calls]
        merged = _merge(gens)
        try:
            first = await anext(merged)
        except Exception as e:
            raise _unavailable(e) or e from None

        async def chain() -> AsyncIterator[tuple[int, SeqEvent]]:
            for c, events in [first]:
                for ev in events:
                    yield first_choice[c] + ev.seq, ev
            async for c, events in merged:
                for ev in events:
                    yield first_choice[c] + ev.seq, ev

        return chain()

    def usage(self, job: Job, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": job.prompt_tokens + completion_tokens,
        }

    def logprobs(
        self, job: Job, ev: SeqEvent, echo_now: bool, offset: int = 0
    ) -> dict[str, Any] | None:
        """``choices[i].logprobs`` for an event (with the prompt's when it is echoed now)."""
        if job.logprobs is None:
            return None
        runs = [ev.prompt_logprobs if echo_now else None, ev.logprobs]
        return format_logprobs(self.token_text, runs, offset)

    async def stream(self, job: Job, chunk: Any) -> StreamingResponse:
        """SSE: ``chunk(index, text, finish, logprobs)`` builds each event's JSON object."""
        events = await self._events(job)

        async def body() -> AsyncIterator[str]:
            tokens: dict[int, int] = {}
            try:
                async for i, ev in events:
                    echo_now = job.echo and i not in tokens
                    tokens[i] = ev.n_tokens
                    text = (job.texts[i // job.n] if echo_now else "") + ev.text
                    lp = self.logprobs(job, ev, echo_now)
                    if text or ev.finish_reason or (lp and lp["tokens"]):
                        yield _sse(chunk(i, text, ev.finish_reason, lp))
                self.metrics.tokens(job.prompt_tokens, sum(tokens.values()))
                if job.include_usage:
                    last = chunk(0, "", None, None)
                    last["choices"], last["usage"] = [], self.usage(job, sum(tokens.values()))
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
        app.add_middleware(MetricsMiddleware, metrics=self.metrics)  # outermost: sees 413/401
        return app
