"""The HTTP routes of the ingress, bound to one :class:`~phi_ray.serving.ingress.Ingress`.

Routes are closures over the replica (not methods) because the app is built per replica by
``__serve_build_asgi_app__``, after its configuration (API key, limits) is known.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from phi_ray.serving.errors import APIError
from phi_ray.serving.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    QualityRequest,
    QualityResponse,
    QualityScore,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503)
}
_STREAM = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE if stream"}}


async def _status(handle: Any, timeout: float = 5.0) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        return await handle.status.remote()

    try:
        return await asyncio.wait_for(call(), timeout)
    except asyncio.TimeoutError:
        return {"state": "error", "detail": f"no answer within {timeout:.0f}s"}
    except Exception as e:
        return {"state": "error", "detail": f"{type(e).__name__}: {e}"}


def add_routes(app: FastAPI, ing: Any) -> None:
    """Register every route of the API on ``app``, served by the ingress replica ``ing``."""

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """Ready (200) once the model is loaded; 503 while loading or after a failed load."""
        model = await _status(ing.model)
        clf = await _status(ing.scorer) if ing.scorer is not None else {"state": "none"}
        details = [d for d in (model.get("detail"), clf.get("detail")) if d]
        status = {"ready": "ok", "loading": "loading"}.get(model["state"], "error")
        if status == "ok" and clf["state"] == "error":
            status = "error"
        body = Health(
            status=status,
            model=model["state"],
            classifier=clf["state"],
            detail="; ".join(details) or None,
        )
        return JSONResponse(body.model_dump(), status_code=200 if status == "ok" else 503)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models() -> ModelList:
        card = ModelCard(id=ing.s.model_name, created=ing.created, max_model_len=ing.context)
        return ModelList(data=[card])

    @app.post(
        "/v1/completions", response_model=CompletionResponse, responses={**_ERRORS, **_STREAM}
    )
    async def completions(body: CompletionRequest) -> Any:
        """Complete one prompt or a list of prompts (``n`` choices each)."""
        ing._check_model(body.model)
        if body.logprobs is not None:
            raise APIError(400, "logprobs is not supported by this server", param="logprobs")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        job = ing._job(prompts, body, body.max_tokens, body.echo)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:

            def chunk(i: int, text: str, finish: str | None) -> dict[str, Any]:
                choice = {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": ing.s.model_name,
                    "choices": [choice],
                }

            return await ing._stream(job, chunk)
        events = await ing._complete(job)
        n = body.n
        choices = [
            {
                "text": (job.prompts[i // n] if body.echo else "") + ev.text,
                "index": i,
                "logprobs": None,
                "finish_reason": ev.finish_reason,
            }
            for i, ev in enumerate(events)
        ]
        return CompletionResponse(
            id=rid,
            created=created,
            model=ing.s.model_name,
            choices=choices,
            usage=ing._usage(job, events),
        )

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**_ERRORS, **_STREAM},
    )
    async def chat(body: ChatCompletionRequest) -> Any:
        """Plain chat: the messages' contents, newline-joined, are the prompt (no template)."""
        ing._check_model(body.model)
        prompt = "\n".join(m.content for m in body.messages)
        if not prompt.strip():
            raise APIError(400, "messages must not all be empty", param="messages")
        job = ing._job([prompt], body, body.max_completion_tokens or body.max_tokens, False)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:

            def chunk(i: int, text: str, finish: str | None) -> dict[str, Any]:
                delta = {"role": "assistant", "content": text}
                choice = {"index": i, "delta": delta, "finish_reason": finish}
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": ing.s.model_name,
                    "choices": [choice],
                }

            return await ing._stream(job, chunk)
        events = await ing._complete(job)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": ev.text},
                "finish_reason": ev.finish_reason,
            }
            for i, ev in enumerate(events)
        ]
        return ChatCompletionResponse(
            id=rid,
            created=created,
            model=ing.s.model_name,
            choices=choices,
            usage=ing._usage(job, events),
        )

    @app.post("/v1/quality", response_model=QualityResponse, responses=_ERRORS)
    async def quality(body: QualityRequest) -> QualityResponse:
        """Score code for educational value with the phi-1 quality classifier."""
        if ing.scorer is None:
            raise APIError(
                503,
                "no quality classifier is loaded on this server; start it with "
                "--classifier DIR (serve.classifier)",
                code="classifier_not_loaded",
            )
        codes = [body.code] if isinstance(body.code, str) else body.code
        if not codes:
            raise APIError(400, "code must not be an empty list", param="code")
        if len(codes) > ing.s.max_quality_codes:
            raise APIError(400, f"at most {ing.s.max_quality_codes} files per request", "code")
        for i, c in enumerate(codes):
            if not c.strip():
                raise APIError(400, f"code[{i}] is empty", param="code")
        res = await ing._call(ing.scorer.score.remote(codes))
        data = [
            QualityScore(index=i, score=s, kept=k)
            for i, (s, k) in enumerate(zip(res["scores"], res["kept"], strict=True))
        ]
        return QualityResponse(data=data, threshold=res["threshold"])
