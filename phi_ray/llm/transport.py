"""One endpoint's HTTP attempts: limiter leases, retries with backoff, cache writes.

:class:`Transport` is what :class:`phi_ray.llm.LLMClient` calls for every answer that is
not in the cache yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import re
from collections import Counter
from typing import Any

import httpx
import openai

from phi_ray.llm.budget import Worst, cost_usd, find_price
from phi_ray.llm.cache import CachedAnswer, ResponseCache, Sent
from phi_ray.llm.types import Failure, LLMError, Request, Result

log = logging.getLogger("phi_ray.llm")

PENDING = object()  # a budget or a fatal error stopped the call: not failed, not done
BUSY = object()  # another process holds this prompt's lease: wait for its answer
_FATAL = (401, 403, 404)  # wrong key / model / URL: every call would fail the same way
_RETRY_STATUS = (408, 409, 429)  # plus every 5xx


def _retry_after(e: openai.APIStatusError, cap: float) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` or ``retry-after``), at most
    ``cap`` (a misconfigured proxy must not park a stage for hours; attempts stay bounded)."""
    headers = e.response.headers
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        with contextlib.suppress(TypeError, ValueError):
            v = float(headers.get(name))
            if v >= 0:
                return min(v * scale, cap)
    return None


class Transport:
    """HTTP attempts against ``cfg.base_url`` under a limiter; paid answers go to the cache.

    ``stop`` holds the budget message once the limiter refused a call, ``fatal`` the error
    once the endpoint answered 401/403/404: from then on no new attempt starts, and the
    answers already in flight still land in the cache (they are paid).
    ``endpoint`` names the endpoint in cache keys; ``lease_s`` is how long a write-ahead
    record holds a prompt for this process (longer than one attempt can take).
    """

    def __init__(
        self,
        cfg: Any,
        cache: ResponseCache | None,
        limiter: Any,
        stats: Counter[str],
        api_key: str | None,
    ) -> None:
        self.cfg, self.cache, self.limiter, self.stats = cfg, cache, limiter, stats
        self._key = api_key
        self._clients: dict[int, openai.AsyncOpenAI] = {}
        self.stop: str | None = None
        self.fatal: LLMError | None = None
        self.endpoint = endpoint_id(cfg)
        self.lease_s = cfg.timeout_s * 1.5 + 30.0
        # Budgets checked in the cache too, so processes that share it share the cap.
        self.caps = (cfg.budget_tokens, cfg.budget_usd)
        self.ratio = 1.0  # most output per max_tokens seen (the cache's history, then ours)

    def openai(self) -> openai.AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            client = openai.AsyncOpenAI(
                base_url=self.cfg.base_url,
                api_key=self._key or "not-needed",
                timeout=self.cfg.timeout_s,
                max_retries=0,  # retries are ours: budget- and limiter-aware
            )
            self._clients[id(loop)] = client
        return client

    def backoff(self, attempt: int) -> float:
        # Exponential with "equal jitter": at least half the step, so herds spread out
        # without collapsing to zero wait.
        step = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)

    def worst(self, req: Request, model: str, params: dict) -> Worst:
        n = int(params.get("n", 1) or 1)
        cap = params.get("max_completion_tokens") or params.get("max_tokens")
        out = int(cap or self.cfg.max_tokens) * n
        price = find_price(model, self.cfg.prices) or {}
        return Worst(req.prompt_bound(), out, price.get("input", 0.0), price.get("output", 0.0))

    async def call(self, req: Request, model: str, params: dict, key: str, acc: Result):
        """Attempts until an answer, a failure, a stop, or another owner's lease.

        Returns a :class:`CachedAnswer` (paid now, or found done while claiming), a
        :class:`Failure`, ``PENDING`` (a budget or a fatal error stopped new calls), or
        ``BUSY`` (another process holds this prompt's lease: wait for its answer).
        """
        worst = self.worst(req, model, params)
        sent = Sent(req.id, req.kind, model, self.endpoint, worst.prompt, worst.out)
        out = math.ceil(worst.out * self.ratio)
        reserve = (worst.prompt + out, (worst.prompt * worst.usd_in + out * worst.usd_out) / 1e6)
        last = "no attempt made"
        for attempt in range(1, self.cfg.max_attempts + 1):
            if self.stop or self.fatal:
                return PENDING
            lease, why = await self.limiter.acquire(worst)
            if lease is None:
                self.stop = self.stop or why
                return PENDING
            paid, delay = (0, 0.0, None), None
            try:
                if self.cache is not None:
                    # The write-ahead record, taken with the slot in hand so the lease is
                    # fresh when the request leaves; renewed at every attempt.
                    state, info = self.cache.claim(key, sent, self.lease_s, reserve, self.caps)
                    if state == "done":
                        return info
                    if state == "refused":  # the budget, counted over every process
                        self.stop = self.stop or str(info)
                        return PENDING
                    if state == "raw":
                        return self.settle(key, *info)
                    if state == "busy":
                        return BUSY
                    if info is not None:
                        self.stats["lease_takeovers"] += 1
                if self.stop or self.fatal:  # set while we waited for the slot
                    return PENDING
                self.stats["attempts"] += 1
                acc.attempts += 1
                resp = await self._post(req, model, params)
                # A 200 is paid: keep its body before anything else can fail or wait.
                raw = resp.content
                if self.cache is not None:
                    self.cache.put_raw(key, raw, sent, reserve)
                ans = parse_body(raw, sent, self.cfg.prices)
                if self.cache is not None:
                    self.cache.settle(key, ans)
                ratio = (
                    ans.completion_tokens / worst.out if worst.out and ans.status == "ok" else None
                )
                paid = (ans.prompt_tokens + ans.completion_tokens, ans.cost_usd, ratio)
                self.ratio = max(self.ratio, ratio or 1.0)
                acc.cached = False
                acc.prompt_tokens += ans.prompt_tokens
                acc.completion_tokens += ans.completion_tokens
                acc.cost_usd += ans.cost_usd
                self.stats.update(
                    api_calls=1,
                    prompt_tokens=ans.prompt_tokens,
                    completion_tokens=ans.completion_tokens,
                    cost_usd=ans.cost_usd,
                )
                if ans.status != "ok":
                    self.stats["malformed_200"] += 1
                return ans
            except openai.APIStatusError as e:
                code = e.status_code
                if code in _FATAL:
                    self.fatal = self.fatal or LLMError(
                        f"{self.cfg.base_url} answered {code} for model {model!r}: {e.message}. "
                        f"Check llm.base_url, llm.model and the key in ${self.cfg.api_key_env}."
                    )
                    return PENDING
                if code not in _RETRY_STATUS and code < 500:
                    return Failure(req.id, f"http_{code}", str(e.message)[:500], None, req.meta)
                last = f"http {code}: {e.message}"
                self.stats["retry_429" if code == 429 else "retry_http"] += 1
                cap = max(60.0, self.cfg.backoff_max_s)
                delay = _retry_after(e, cap) if code == 429 else None
            except openai.APITimeoutError:
                last = f"timeout after {self.cfg.timeout_s}s"
                self.stats["retry_timeout"] += 1
            except openai.APIConnectionError as e:
                last = f"connection error: {e}"
                self.stats["retry_connection"] += 1
            finally:
                await self.limiter.release(lease, *paid)
            if attempt < self.cfg.max_attempts:
                self.stats["retries"] += 1
                wait = (
                    self.backoff(attempt)
                    if delay is None
                    else delay + random.uniform(0, delay * 0.1)
                )
                log.debug(
                    "request %s attempt %d failed (%s); retrying in %.3fs",
                    req.id,
                    attempt,
                    last,
                    wait,
                )
                await asyncio.sleep(wait)
        return Failure(
            req.id,
            "retries_exhausted",
            f"{self.cfg.max_attempts} attempts; last: {last}",
            None,
            req.meta,
        )

    def settle(self, key: str, raw: bytes, sent: Sent) -> CachedAnswer:
        """Parse a body that was paid and committed but not parsed (its process died)."""
        ans = parse_body(raw, sent, self.cfg.prices)
        if self.cache is not None:
            self.cache.settle(key, ans)
        return ans

    async def _post(self, req: Request, model: str, params: dict) -> Any:
        # The low-level post with the raw HTTP response: the body must reach the cache
        # unparsed (a body the SDK could not parse would otherwise be lost, though paid),
        # and the typed ``create`` methods cost ~3x more CPU per call.
        if req.kind == "chat":
            path, body = "/chat/completions", {"model": model, "messages": req.messages}
        else:
            path, body = "/completions", {"model": model, "prompt": req.prompt}
        return await self.openai().post(path, body={**body, **params}, cast_to=httpx.Response)

    async def aclose(self) -> None:
        """Close the HTTP clients of the running loop (call on the loop that used them)."""
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.pop(loop_id, None)
        if client is not None:
            await client.close()


def endpoint_id(cfg: Any) -> str:
    """The endpoint's name in cache keys: ``llm.endpoint_id``, else the base URL."""
    return getattr(cfg, "endpoint_id", None) or (cfg.base_url or "").rstrip("/")


# A usage count above this is clamped to it: SQLite's integers are 64-bit, so a hostile or
# broken server's 10**20 would raise OverflowError after the body was committed, out of the
# batch and out of every rerun that settles it. Clamped, it still exhausts any budget.
MAX_USAGE_COUNT = 1 << 40


def _count(v: Any) -> int | None:
    ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return min(v, MAX_USAGE_COUNT) if ok else None


def _unicode(s: str) -> str:
    """``s`` with any lone surrogate (JSON can escape one: ``"\\ud800"``) as U+FFFD: such
    text is not Unicode, so the cache (SQLite), a parser or a stage's Parquet write would
    raise on it."""
    return _SURROGATE.sub("\ufffd", s)  # a str never holds a *paired* surrogate


_SURROGATE = re.compile("[\ud800-\udfff]")


def _texts(obj: Any, kind: str) -> list[str]:
    """The choices' texts; ValueError when the body has none a caller could read."""
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ValueError("no choices in the answer")
    texts = []
    for c in choices:
        if not isinstance(c, dict):
            raise ValueError(f"a choice is {type(c).__name__}, not an object")
        if kind == "chat":
            msg = c.get("message")
            text = msg.get("content") if isinstance(msg, dict) else None
            if msg is None or not isinstance(msg, dict):
                raise ValueError("a chat choice has no message")
        else:
            text = c.get("text")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"a choice's text is {type(text).__name__}, not a string")
        texts.append(text or "")  # None (a refusal, a tool call): unusable, the parser says so
    return texts


def parse_body(raw: bytes, sent: Sent, prices: dict[str, dict[str, float]]) -> CachedAnswer:
    """A 200's body as an answer; never raises (a body it cannot read is "malformed").

    Missing or invalid usage fields are estimated from above, never re-requested: the
    prompt by its bound, the output by its UTF-8 bytes (byte-level BPE makes at most one
    token per byte), and, when even the texts are unreadable, by the output cap.
    """
    obj: Any = None
    error = None
    try:
        obj = json.loads(raw)
        texts = _texts(obj, sent.kind)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        texts, error = [], f"malformed 200 response: {e}"
    usage = obj.get("usage") if isinstance(obj, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    pt, ct = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    total = _count(usage.get("total_tokens"))
    if pt is None and ct is not None and total is not None and total >= ct:
        pt = total - ct
    if ct is None and pt is not None and total is not None and total >= pt:
        ct = total - pt
    if pt is None:
        pt = sent.prompt_bound
    if ct is None:
        ct = (
            sum(len(t.encode("utf-8", "surrogatepass")) + 4 for t in texts)
            if texts
            else sent.max_out
        )
    model = sent.model
    answered = obj.get("model") if isinstance(obj, dict) else None
    return CachedAnswer(
        [_unicode(t) for t in texts],
        _unicode(answered) if isinstance(answered, str) and answered else model,
        pt,
        ct,
        cost_usd(model, pt, ct, prices),
        "ok" if error is None else "malformed",
        error,
        None if error is None else raw[:65536],
    )
