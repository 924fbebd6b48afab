"""The vLLM application's ingress: Ray Serve LLM's ``OpenAiIngress`` plus phi-ray's routes.

Imported only where vLLM is installed (``ray.serve.llm`` loads vLLM's protocol models when
it is imported); :mod:`phi_ray.serving.llm_app` builds the application around it.

Added to Ray's OpenAI routes (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``,
``/tokenize``, ``/detokenize``, ... answered by vLLM's own OpenAI layer in the LLMServer
replicas):

- ``POST /v1/quality``: the quality classifier (the ``QualityScorer`` deployment), with the
  same request, limits, errors and response as on the transformers engine;
- ``GET /healthz``: ``ok`` once the model answers its health check (``phi-ray serve`` waits
  on it, as it does on the transformers engine);
- ``GET /health`` and ``GET /tokenizer_info`` (which lm-eval's remote tokenizer reads):
  vLLM's own server has them, but Ray's ingress does not route them.

The API key (``serve.api_key_env`` in the ingress replicas' environment) guards ``/v1/*``
as on the transformers engine.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS, init
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from starlette.responses import JSONResponse, Response

from phi_ray.serving.errors import APIError, APIKeyMiddleware, error_body
from phi_ray.serving.routes import quality_codes, quality_response
from phi_ray.serving.schemas import Health, QualityRequest, lone_surrogate


class _EnvAPIKeyMiddleware(APIKeyMiddleware):
    """The key is read from the environment when the app is first built in the replica
    (Starlette builds its middleware stack on the first request), never on the driver."""

    def __init__(self, app: Any, api_key_env: str) -> None:
        super().__init__(app, os.environ.get(api_key_env) or None)


async def _state(response: Any, timeout: float = 5.0) -> tuple[str, str | None]:
    """("ready", None) once a handle call (a health check) returns, else the reason."""

    async def call() -> Any:
        return await response

    try:
        await asyncio.wait_for(call(), timeout)
        return "ready", None
    except asyncio.TimeoutError:  # no replica to answer yet: one is starting (or pending)
        return "loading", f"no answer to its health check within {timeout:.0f}s"
    except Exception as e:
        return "error", f"{type(e).__name__}: {e}"


class PhiLLMIngress(OpenAiIngress):
    """Ray's OpenAI ingress with the classifier and phi-ray's readiness route."""

    def __init__(
        self,
        llm_deployments: dict[str, Any],
        model_cards: dict[str, Any],
        *,
        scorer: Any | None = None,
        model_dir: str | None = None,
        max_quality_codes: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.scorer = scorer
        self.model_dir = model_dir
        self.max_quality_codes = max_quality_codes
        self._tokenizer: Any = None

    async def tokenizer_info(self) -> JSONResponse:
        """vLLM's ``/tokenizer_info`` (which Ray's ingress does not route): what lm-eval's
        remote tokenizer reads before it calls ``/tokenize``. The tokenizer is loaded on the
        first call, from the model directory (this node's copy of an object-store one)."""
        from transformers import AutoConfig, AutoTokenizer

        from phi_ray.serving.schemas import TokenizerInfo
        from phi_ray.train.data import localize

        if self.model_dir is None:
            return JSONResponse(error_body(404, "no tokenizer on this server"), 404)
        if self._tokenizer is None:
            local = await asyncio.to_thread(localize, self.model_dir)
            tok = await asyncio.to_thread(AutoTokenizer.from_pretrained, local)
            self._context = int(AutoConfig.from_pretrained(local).max_position_embeddings)
            self._tokenizer = tok
        info = TokenizerInfo.of(self._tokenizer, self._context)
        return JSONResponse(info.model_dump())

    async def quality(self, body: QualityRequest) -> JSONResponse:
        """Score code for educational value with the phi-1 quality classifier."""
        try:
            if (where := lone_surrogate(body)) is not None:
                raise APIError(400, f"{where} contains a lone surrogate", where)
            if self.scorer is None:
                raise APIError(
                    503,
                    "no quality classifier is loaded on this server; start it with "
                    "--classifier DIR (serve.classifier)",
                    code="classifier_not_loaded",
                )
            codes = quality_codes(body, self.max_quality_codes)
            res = await self.scorer.score.remote(codes)
        except APIError as e:
            return JSONResponse(error_body(e.status, e.message, e.param, e.code), e.status)
        except Exception as e:  # a classifier that is loading or failed: 503 with why
            msg = f"{type(e).__name__}: {e}"
            return JSONResponse(error_body(503, msg, code="unavailable"), 503)
        return JSONResponse(quality_response(res).model_dump())

    async def health(self) -> Response:
        """vLLM's ``/health``: an empty 200 once every model answers its health check."""
        for h in self._default_serve_handles.values():
            state, why = await _state(h.check_health.remote())
            if state != "ready":
                return JSONResponse(error_body(503, why or state, code="unavailable"), 503)
        return Response(status_code=200)

    async def healthz(self) -> JSONResponse:
        """200 once every model answers its health check; 503 with the reason otherwise."""
        models = [
            await _state(h.check_health.remote()) for h in self._default_serve_handles.values()
        ]
        model, detail = next(((s, d) for s, d in models if s != "ready"), ("ready", None))
        clf = "none"
        if self.scorer is not None:
            st = await _state_of_scorer(self.scorer)
            clf, detail = st["state"], detail or st.get("detail")
        if model == "ready" and clf in ("ready", "none"):
            status = "ok"
        elif "error" in (model, clf):
            status = "error"
        else:
            status = "loading"
        body = Health(status=status, model=model, classifier=clf, detail=detail)
        return JSONResponse(body.model_dump(), status_code=200 if status == "ok" else 503)


async def _state_of_scorer(scorer: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The classifier's load state (loading / ready / error) and reason."""

    async def call() -> dict[str, Any]:
        return await scorer.status.remote()

    try:
        return await asyncio.wait_for(call(), timeout)
    except Exception as e:
        return {"state": "error", "detail": f"{type(e).__name__}: {e}"}


ENDPOINTS = {
    **DEFAULT_ENDPOINTS,
    "quality": lambda app: app.post("/v1/quality"),
    "healthz": lambda app: app.get("/healthz"),
    "health": lambda app: app.get("/health"),
    "tokenizer_info": lambda app: app.get("/tokenizer_info"),
}


def ingress_deployment_class(api_key_env: str = "PHI_RAY_API_KEY") -> type:
    """``PhiLLMIngress`` as a Serve ingress on Ray's FastAPI app (its error handling,
    CORS, metrics and request ids) with the API-key check in front."""
    app: FastAPI = init()
    app.add_middleware(_EnvAPIKeyMiddleware, api_key_env=api_key_env)
    return make_fastapi_ingress(PhiLLMIngress, endpoint_map=ENDPOINTS, app=app)
