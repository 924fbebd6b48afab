"""The HTTP routes of the ingress, bound to one :class:`~phi_ray.serving.ingress.Ingress`.

Routes are closures over the replica (not methods) because the app is built per replica by
``__serve_build_asgi_app__``, after its configuration (API key, limits) is known; they use
only the replica's public methods (validation, jobs, calls, formatting live there and in
``protocol.py``). Besides OpenAI's routes there are vLLM's: ``/tokenize``,
``/detokenize``, ``/tokenizer_info`` (lm-eval's remote tokenizer), ``/health``,
``/version`` and Prometheus ``/metrics``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from phi_ray.serving.errors import APIError
from phi_ray.serving.metrics import CONTENT_TYPE
from phi_ray.serving.schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    QualityRequest,
    QualityResponse,
    QualityScore,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfo,
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
    _health_routes(app, ing)
    _completion_routes(app, ing)
    _tokenizer_routes(app, ing)
    _quality_routes(app, ing)


def _health_routes(app: FastAPI, ing: Any) -> None:
    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    async def healthz() -> JSONResponse:
        """Ready (200) once the model and the classifier (if any) are loaded; 503 while
        either loads or after a failed load. ``phi-ray serve`` says ready only then, so its
        first ``/v1/quality`` is not a 503 (the vLLM application's /healthz does the same);
        vLLM's ``/health`` below stays the model's alone."""
        model = await _status(ing.model)
        clf = await _status(ing.scorer) if ing.scorer is not None else {"state": "none"}
        details = [d for d in (model.get("detail"), clf.get("detail")) if d]
        if "error" in (model["state"], clf["state"]):
            status = "error"
        elif model["state"] == "ready" and clf["state"] in ("ready", "none"):
            status = "ok"
        else:
            status = "loading"
        body = Health(
            status=status,
            model=model["state"],
            classifier=clf["state"],
            detail="; ".join(details) or None,
        )
        return JSONResponse(body.model_dump(), status_code=200 if status == "ok" else 503)

    @app.get("/health", responses={503: {"model": ErrorResponse}})
    async def health() -> Response:
        """vLLM's: an empty 200 once the model can serve, else 503 with the reason."""
        model = await _status(ing.model)
        if model["state"] != "ready":
            why = model.get("detail") or f"the model is {model['state']}"
            raise APIError(503, why, code="unavailable")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> dict[str, str]:
        from phi_ray import __version__

        return {"version": __version__}

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text: requests, latency, tokens in/out, batch sizes, queue depth."""
        return Response(ing.metrics.render(await _status(ing.model)), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models() -> ModelList:
        card = ModelCard(id=ing.s.model_name, created=ing.created, max_model_len=ing.context)
        return ModelList(data=[card])


def _completion_routes(app: FastAPI, ing: Any) -> None:
    def chunker(rid: str, created: int, kind: str) -> Any:
        def chunk(i: int, text: str, finish: str | None, lp: Any) -> dict[str, Any]:
            if kind == "text_completion":
                choice = {"text": text, "index": i, "logprobs": lp, "finish_reason": finish}
            else:
                delta = {"role": "assistant", "content": text}
                choice = {"index": i, "delta": delta, "finish_reason": finish}
            return {
                "id": rid,
                "object": kind,
                "created": created,
                "model": ing.s.model_name,
                "choices": [choice],
            }

        return chunk

    @app.post(
        "/v1/completions", response_model=CompletionResponse, responses={**_ERRORS, **_STREAM}
    )
    async def completions(body: CompletionRequest) -> Any:
        """Complete prompts (text or token ids), ``n`` choices each; ``logprobs``, ``echo``."""
        ing.check(body)
        job = ing.completion_job(body)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return await ing.stream(job, chunker(rid, created, "text_completion"))
        events = await ing.complete(job)
        choices = [
            {
                "text": (job.texts[i // job.n] if job.echo else "") + ev.text,
                "index": i,
                "logprobs": ing.logprobs(job, ev, echo_now=job.echo),
                "finish_reason": ev.finish_reason,
            }
            for i, ev in enumerate(events)
        ]
        usage = ing.usage(job, sum(e.n_tokens for e in events))
        return CompletionResponse(
            id=rid, created=created, model=ing.s.model_name, choices=choices, usage=usage
        )

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**_ERRORS, **_STREAM},
    )
    async def chat(body: ChatCompletionRequest) -> Any:
        """Plain chat: the messages' contents, newline-joined, are the prompt (no template)."""
        ing.check(body)
        job = ing.chat_job(body)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return await ing.stream(job, chunker(rid, created, "chat.completion.chunk"))
        events = await ing.complete(job)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": ev.text},
                "finish_reason": ev.finish_reason,
            }
            for i, ev in enumerate(events)
        ]
        usage = ing.usage(job, sum(e.n_tokens for e in events))
        return ChatCompletionResponse(
            id=rid, created=created, model=ing.s.model_name, choices=choices, usage=usage
        )


def _tokenizer_routes(app: FastAPI, ing: Any) -> None:
    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(body: TokenizeRequest) -> TokenizeResponse:
        """vLLM's: the served tokenizer's ids for ``prompt``."""
        ing.check(body)
        ids = ing.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        strs = ing.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
        return TokenizeResponse(
            count=len(ids), max_model_len=ing.context, tokens=ids, token_strs=strs
        )

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(body: DetokenizeRequest) -> DetokenizeResponse:
        """vLLM's: the text of token ids."""
        ing.check(body)
        vocab = ing.limits.vocab
        if (bad := next((t for t in body.tokens if not 0 <= t < vocab), None)) is not None:
            raise APIError(
                400, f"token id {bad} is out of vocabulary (0 <= id < {vocab})", "tokens"
            )
        return DetokenizeResponse(prompt=ing.tokenizer.decode(body.tokens))

    @app.get("/tokenizer_info", response_model=TokenizerInfo)
    async def tokenizer_info() -> TokenizerInfo:
        """vLLM's: what a remote tokenizer client (lm-eval's) needs to know."""
        return TokenizerInfo.of(ing.tokenizer, ing.context)


def _quality_routes(app: FastAPI, ing: Any) -> None:
    @app.post("/v1/quality", response_model=QualityResponse, responses=_ERRORS)
    async def quality(body: QualityRequest) -> QualityResponse:
        """Score code for educational value with the phi-1 quality classifier."""
        ing.check(body)
        if ing.scorer is None:
            raise APIError(
                503,
                "no quality classifier is loaded on this server; start it with "
                "--classifier DIR (serve.classifier)",
                code="classifier_not_loaded",
            )
        codes = quality_codes(body, ing.s.max_quality_codes)
        return quality_response(await ing.call(ing.scorer.score.remote(codes)))


def quality_codes(body: QualityRequest, max_codes: int) -> list[str]:
    """The files of a ``/v1/quality`` request, or an APIError (both engines' ingresses)."""
    codes = [body.code] if isinstance(body.code, str) else body.code
    if not codes:
        raise APIError(400, "code must not be an empty list", param="code")
    if len(codes) > max_codes:
        raise APIError(400, f"at most {max_codes} files per request", "code")
    for i, c in enumerate(codes):
        if not c.strip():
            raise APIError(400, f"code[{i}] is empty", param="code")
    return codes


def quality_response(res: dict[str, Any]) -> QualityResponse:
    """``QualityScorer.score``'s answer as the ``/v1/quality`` response."""
    data = [
        QualityScore(index=i, score=s, kept=k)
        for i, (s, k) in enumerate(zip(res["scores"], res["kept"], strict=True))
    ]
    return QualityResponse(data=data, threshold=res["threshold"])
