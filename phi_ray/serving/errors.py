"""OpenAI-style errors for the HTTP API: every client mistake is a 4xx with a JSON body.

Body: ``{"error": {"message", "type", "param", "code"}}``, as OpenAI returns it, so clients
(the ``openai`` package included) raise their usual typed exceptions. Two ASGI middlewares
run before routing: a request body size cap (Content-Length and chunked bodies alike) and
the optional bearer API key.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("phi_ray.serving")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """A request that cannot be served, with the HTTP status and OpenAI error fields."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class ModelUnavailable(Exception):
    """Raised by a replica whose model is still loading or failed to load (-> 503)."""


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    etype = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    message, param = _printable(message), _printable(param)
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


def _printable(s: str | None) -> str | None:
    """``s`` as valid UTF-8: a lone surrogate from the request (an unknown field's name)
    is written as its escape, so an error message can never fail to encode (a 500)."""
    return None if s is None else s.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, message: str, **kw: Any) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse(error_body(status, message, **kw), status_code=status, headers=headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict", "null"}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request body", None
    extra = [str(e["loc"][-1]) for e in errs if e.get("type") == "extra_forbidden"]
    if extra:  # a parameter this server does not have: say so, rather than ignore it
        names = ", ".join(repr(x) for x in extra)
        return f"unsupported parameter(s) {names}: this server does not implement them", extra[0]
    e = errs[0]
    # Union members show up in loc as type tags ("str", "list[str]"): not request fields.
    loc = [str(p) for p in e.get("loc", ()) if p != "body" and str(p) not in _TYPE_TAGS]
    loc = [p for p in loc if "[" not in p]
    param = ".".join(loc) or None
    if e.get("type") == "json_invalid":
        return f"request body is not valid JSON: {e.get('ctx', {}).get('error', e['msg'])}", None
    if not loc and e.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return "request body must be a JSON object", None
    more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
    return f"{param or 'body'}: {e['msg']}{more}", param


def install_error_handlers(app: FastAPI) -> None:
    """Map validation errors, unknown routes and our :class:`APIError` to OpenAI bodies."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(APIError)
    async def _api(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error serving a request")
        return error_response(500, f"internal error: {type(exc).__name__}")


async def _send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``, declared (Content-Length) or streamed (chunked)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = error_body(413, f"request body exceeds {self.max_bytes} bytes", code="too_large")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _send_json(send, 413, too_big)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return msg

        await self.app(scope, limited_receive, send)


class _TooLarge(HTTPException):
    """Raised mid-body; an HTTPException so FastAPI's body reader passes it through."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds {max_bytes} bytes")


class APIKeyMiddleware:
    """401 for ``/v1/*`` requests without ``Authorization: Bearer <key>`` when a key is set."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app, self.key = app, api_key.encode() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.key is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):  # a route prefix (serve.run(route_prefix=...))
            path = path[len(root) :]
        if not path.startswith("/v1/"):
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            body = error_body(401, "Incorrect or missing API key", code="invalid_api_key")
            return await _send_json(send, 401, body)
        return await self.app(scope, receive, send)
