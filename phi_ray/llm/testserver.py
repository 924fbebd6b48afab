"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

It answers ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``GET /v1/models``
with OpenAI-shaped JSON (``choices``, ``usage``), from a script (``responder``), counts
every call, and injects faults on demand::

    from phi_ray.llm.testserver import OpenAITestServer

    def responder(kind: str, body: dict) -> str:      # kind: "chat" | "completion"
        return '{"score": 3, "rationale": "ok"}'

    with OpenAITestServer(responder, latency_s=0.0) as srv:
        srv.fault("429", times=2, retry_after=0.01)    # the next 2 requests get 429
        srv.fault_rate(0.2, seed=0)                    # then 20% random faults
        ... point the client at srv.base_url ...
        assert srv.calls["ok"] == ...                  # answers actually given (paid)
        assert max(srv.paid.values()) == 1             # no identical request paid twice

Fault kinds: ``429`` (with ``Retry-After``), ``500``, ``slow`` (answers after ``delay_s``),
``drop`` (closes the connection without an answer), ``malformed`` (a 200 answer, with
usage, whose content is garbage: the caller's parser must reject it), and, only when
asked for by name: ``400`` (a bad-request error no retry can fix), ``401`` / ``403`` /
``404`` (fatal: wrong key, forbidden, unknown model), and billed 200s a client must not
pay for twice: ``badjson`` (the body is not JSON), ``nochoices`` (usage, no choices),
``nousage`` (no usage object), ``partial_usage`` (usage without ``completion_tokens`` and
``total_tokens``). :meth:`OpenAITestServer.fault_on` aims a fault at the requests whose
prompt contains a string (deterministic under concurrency).

``honor_max_tokens=False`` (the default, and what some servers do) answers in full
whatever ``max_tokens`` says; True cuts each answer to ``max_tokens`` tokens.
``count_tokens`` replaces the token counter (e.g. a real tokenizer, for CJK prompts).

``calls`` counters: ``requests`` (completion POSTs), ``chat``, ``completion``, ``models``,
``ok`` (200 answers with usage: what a paid API bills), ``fault:<kind>``,
``prompt_tokens``, ``completion_tokens``, ``peak_inflight`` (most completion requests
being handled at once: checks a client's concurrency limit). ``paid`` counts billed 200
answers per request fingerprint (sha256 of the canonical request JSON), ``paid_by_prompt``
per prompt text (the last message's content, or the prompt); ``bodies`` keeps every
request body; :attr:`OpenAITestServer.inflight` is how many are being handled now.

Token counts are ``ceil(chars / 4)``, deterministic, so tests can predict costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[str, dict[str, Any]], str]
FAULT_KINDS = ("429", "500", "slow", "drop", "malformed")
_BILLED = ("badjson", "nochoices", "nousage", "partial_usage")  # 200s with a defect
# Only on request, never drawn by fault_rate: not retryable, or billed.
_ALL_FAULTS = (*FAULT_KINDS, "400", "401", "403", "404", *_BILLED)
MALFORMED = "<<garbled>> \x00 not what you asked for {"


def count_tokens(text: str) -> int:
    """The server's deterministic token count: one token per 4 characters, rounded up."""
    return math.ceil(len(text) / 4)


_chars_over_4 = count_tokens  # the default, under a name the constructor's argument leaves free


def fingerprint(body: dict[str, Any]) -> str:
    """sha256 of a request body's canonical JSON: equal requests share a fingerprint."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def default_responder(kind: str, body: dict[str, Any]) -> str:
    """Chat: ``"OK <8 hex>"`` derived from the messages; completion: ``"    pass\\n"``."""
    if kind == "chat":
        return "OK " + fingerprint({"m": body.get("messages")})[:8]
    return "    pass\n"


class _Fault:
    def __init__(self, kind: str, retry_after: float, delay_s: float) -> None:
        if kind not in _ALL_FAULTS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(_ALL_FAULTS)}")
        self.kind, self.retry_after, self.delay_s = kind, retry_after, delay_s


class OpenAITestServer:
    """A threaded local OpenAI-compatible server; use as a context manager.

    ``responder(kind, body) -> str`` produces each choice's text; ``latency_s`` delays
    every answer (settable while running). ``api_key``, when given, is required as a
    Bearer token (401 otherwise). ``models`` are listed by ``/v1/models``; any model
    name is accepted by the completion endpoints.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        latency_s: float = 0.0,
        api_key: str | None = None,
        models: tuple[str, ...] = ("test-model",),
        honor_max_tokens: bool = False,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.responder = responder or default_responder
        self.latency_s = latency_s
        self.api_key = api_key
        self.models = models
        self.honor_max_tokens = honor_max_tokens
        self.count_tokens = count_tokens or _chars_over_4
        self.calls: Counter[str] = Counter()
        self.paid: Counter[str] = Counter()
        self.paid_by_prompt: Counter[str] = Counter()
        self._aimed: list[tuple[str, _Fault, list[int]]] = []
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._queue: deque[_Fault] = deque()
        self._rate = 0.0
        self._rate_kinds: tuple[str, ...] = ()
        self._rate_args = (0.01, 0.05)
        self._rng = random.Random(0)
        self._inflight = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> OpenAITestServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- faults ---------------------------------------------------------------------
    def fault(
        self, kind: str, times: int = 1, retry_after: float = 0.01, delay_s: float = 0.05
    ) -> None:
        """Answer the next ``times`` completion requests with fault ``kind`` (queued FIFO)."""
        with self._lock:
            self._queue.extend(_Fault(kind, retry_after, delay_s) for _ in range(times))

    def fault_rate(
        self,
        rate: float,
        kinds: tuple[str, ...] = FAULT_KINDS,
        seed: int = 0,
        retry_after: float = 0.01,
        delay_s: float = 0.05,
    ) -> None:
        """From now on, each request (after queued faults) fails with probability ``rate``,
        with a kind drawn uniformly from ``kinds`` (seeded, so runs are reproducible)."""
        for k in kinds:
            _Fault(k, 0, 0)  # validates the name
        with self._lock:
            self._rate, self._rate_kinds = rate, tuple(kinds)
            self._rate_args = (retry_after, delay_s)
            self._rng = random.Random(seed)

    def fault_on(
        self,
        prompt_contains: str,
        kind: str,
        times: int = 1,
        retry_after: float = 0.01,
        delay_s: float = 0.05,
    ) -> None:
        """Answer the next ``times`` requests whose prompt contains ``prompt_contains``
        with fault ``kind`` (before queued and random faults)."""
        with self._lock:
            self._aimed.append((prompt_contains, _Fault(kind, retry_after, delay_s), [times]))

    @property
    def inflight(self) -> int:
        """Completion requests being handled right now."""
        with self._lock:
            return self._inflight

    def clear_faults(self) -> None:
        with self._lock:
            self._queue.clear()
            self._aimed.clear()
            self._rate = 0.0

    def _next_fault(self, prompt: str = "") -> _Fault | None:
        with self._lock:
            for needle, fault, left in self._aimed:
                if left[0] > 0 and needle in prompt:
                    left[0] -= 1
                    return fault
            if self._queue:
                return self._queue.popleft()
            if self._rate > 0 and self._rng.random() < self._rate:
                return _Fault(self._rng.choice(self._rate_kinds), *self._rate_args)
        return None

    def _count(self, *keys: str, **amounts: int) -> None:
        with self._lock:
            for k in keys:
                self.calls[k] += 1
            for k, n in amounts.items():
                self.calls[k] += n


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) resets connections when a client opens dozens at
    # once, which would look like injected faults.
    request_queue_size = 1024
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAITestServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle's algorithm
        # meets the client's delayed ACK and every answer stalls ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, etype: str, headers: dict | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": etype, "code": None}}, headers)

    def _authorised(self) -> bool:
        key = self.owner.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._error(401, "invalid api key", "invalid_request_error")
        return False

    def do_GET(self) -> None:
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/v1/models":
            self._error(404, f"no route {self.path}", "invalid_request_error")
            return
        self.owner._count("models")
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "phi-ray"}
            for m in self.owner.models
        ]
        self._send(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if not self._authorised():
            return
        kind = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}.get(
            self.path.rstrip("/")
        )
        if kind is None:
            self._error(404, f"no route {self.path}", "invalid_request_error")
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._error(400, "body is not JSON", "invalid_request_error")
            return
        srv = self.owner
        srv._count("requests", kind)
        with srv._lock:
            srv.bodies.append(body)
            srv._inflight += 1
            srv.calls["peak_inflight"] = max(srv.calls["peak_inflight"], srv._inflight)
        try:
            self._complete(kind, body)
        finally:
            with srv._lock:
                srv._inflight -= 1

    def _complete(self, kind: str, body: dict[str, Any]) -> None:
        srv = self.owner
        if body.get("stream"):
            self._error(400, "the test server does not stream", "invalid_request_error")
            return
        fault = srv._next_fault(prompt_of(kind, body))
        if fault is not None:
            srv._count(f"fault:{fault.kind}")
            if self._apply(fault):
                return
        if srv.latency_s > 0:
            time.sleep(srv.latency_s)
        self._answer(kind, body, fault.kind if fault is not None else None)

    def _apply(self, fault: _Fault) -> bool:
        """Act out a fault; True when the request is finished (no normal answer)."""
        if fault.kind == "429":
            ra = f"{fault.retry_after:g}"
            hdr = {"Retry-After": ra, "retry-after-ms": str(int(fault.retry_after * 1000))}
            self._error(429, "rate limited (injected)", "rate_limit_exceeded", hdr)
            return True
        if fault.kind in ("400", "401", "403", "404"):
            self._error(int(fault.kind), f"{fault.kind} (injected)", "invalid_request_error")
            return True
        if fault.kind == "500":
            self._error(500, "internal error (injected)", "server_error")
            return True
        if fault.kind == "drop":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if fault.kind == "slow":
            time.sleep(fault.delay_s)
        return False

    def _answer(self, kind: str, body: dict[str, Any], defect: str | None) -> None:
        srv = self.owner
        garbage = defect == "malformed"
        n = int(body.get("n") or 1)
        if kind == "chat":
            prompt_text = "".join(str(m.get("content", "")) for m in body.get("messages", []))
            prompts = [None]
        else:
            p = body.get("prompt", "")
            prompts = p if isinstance(p, list) else [p]
            prompt_text = "".join(str(x) for x in prompts)
        choices, out_tokens = [], 0
        for pi, prompt in enumerate(prompts):
            sub = body if prompt is None else {**body, "prompt": prompt}
            for j in range(n):
                try:
                    text = MALFORMED if garbage else srv.responder(kind, sub)
                except Exception as e:  # a responder bug is a 500, visibly
                    self._error(500, f"responder raised {type(e).__name__}: {e}", "server_error")
                    return
                if srv.honor_max_tokens and body.get("max_tokens") is not None:
                    text = _cut(text, int(body["max_tokens"]), srv.count_tokens)
                out_tokens += srv.count_tokens(text)
                idx = pi * n + j
                if kind == "chat":
                    msg = {"role": "assistant", "content": text}
                    choices.append({"index": idx, "message": msg, "finish_reason": "stop"})
                else:
                    choices.append(
                        {"index": idx, "text": text, "finish_reason": "stop", "logprobs": None}
                    )
        in_tokens = srv.count_tokens(prompt_text)
        usage = {
            "prompt_tokens": in_tokens,
            "completion_tokens": out_tokens,
            "total_tokens": in_tokens + out_tokens,
        }
        obj = {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": choices,
            "usage": usage,
        }
        srv._count("ok", prompt_tokens=in_tokens, completion_tokens=out_tokens)
        with srv._lock:  # billed: whatever the client makes of the answer, it is paid
            srv.paid[fingerprint(body)] += 1
            srv.paid_by_prompt[prompt_of(kind, body)] += 1
        if defect == "badjson":
            data = b'{"id": "x", "choices": [{"index": 0, "message": '  # cut off mid-body
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if defect == "nochoices":
            obj["choices"] = []
        elif defect == "nousage":
            del obj["usage"]
        elif defect == "partial_usage":
            obj["usage"] = {"prompt_tokens": in_tokens}
        self._send(200, obj)


def prompt_of(kind: str, body: dict[str, Any]) -> str:
    """The prompt text a request is about: the last message's content, or the prompt."""
    if kind == "chat":
        msgs = body.get("messages") or [{}]
        return str(msgs[-1].get("content", "")) if isinstance(msgs[-1], dict) else ""
    p = body.get("prompt", "")
    return "".join(str(x) for x in p) if isinstance(p, list) else str(p)


def _cut(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` that counts at most ``max_tokens`` tokens."""
    lo, hi = 0, len(text)
    while lo < hi:  # binary search: count() is monotone in the prefix length
        mid = (lo + hi + 1) // 2
        if count(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]
