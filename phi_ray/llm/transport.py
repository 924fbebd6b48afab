"""One endpoint's HTTP attempts: limiter leases, retries with backoff, cache writes.

:class:`Transport` is what :class:`phi_ray.llm.LLMClient` calls for every answer that is
not in the cache yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from typing import Any

import openai

from phi_ray.llm.budget import cost_usd
from phi_ray.llm.cache import CachedAnswer, ResponseCache
from phi_ray.llm.types import Failure, LLMError, Request, Result

log = logging.getLogger("phi_ray.llm")

PENDING = object()  # a budget refused the call: not failed, just not done
_FATAL = (401, 403, 404)  # wrong key / model / URL: every call would fail the same way
_RETRY_STATUS = (408, 409, 429)  # plus every 5xx
_BAD_RESPONSE = (
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    openai.APIResponseValidationError,
)


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

    ``stop`` holds the budget message once the limiter refused a call: from then on no new
    attempt starts (answers already in flight still land in the cache).
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

    async def call(self, req: Request, model: str, params: dict, key: str, acc: Result):
        n = int(params.get("n", 1) or 1)
        est_out = int(params.get("max_tokens") or self.cfg.max_tokens) * n
        est_in = req.estimate_prompt_tokens()
        est = (est_in + est_out, cost_usd(model, est_in, est_out, self.cfg.prices))
        last = "no attempt made"
        for attempt in range(1, self.cfg.max_attempts + 1):
            if self.stop:
                return PENDING
            lease, why = await self.limiter.acquire(*est)
            if lease is None:
                self.stop = self.stop or why
                return PENDING
            paid, delay = (0, 0.0), None
            self.stats["attempts"] += 1
            acc.attempts += 1
            try:
                ans = await self._send(req, model, params)
                if self.cache is not None:
                    self.cache.put(key, ans)  # committed before anyone parses it
                paid = (ans.prompt_tokens + ans.completion_tokens, ans.cost_usd)
                self.stats.update(
                    api_calls=1,
                    prompt_tokens=ans.prompt_tokens,
                    completion_tokens=ans.completion_tokens,
                    cost_usd=ans.cost_usd,
                )
                return ans
            except openai.APIStatusError as e:
                code = e.status_code
                if code in _FATAL:
                    raise LLMError(
                        f"{self.cfg.base_url} answered {code} for model {model!r}: {e.message}. "
                        f"Check llm.base_url, llm.model and the key in ${self.cfg.api_key_env}."
                    ) from None
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
            except _BAD_RESPONSE as e:
                last = f"unusable response: {type(e).__name__}: {e}"
                self.stats["retry_bad_response"] += 1
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

    async def _send(self, req: Request, model: str, params: dict) -> CachedAnswer:
        # The low-level post with a plain dict answer: the typed ``create`` methods spend
        # ~3x more CPU per call validating and building pydantic models we do not need.
        if req.kind == "chat":
            path, body = "/chat/completions", {"model": model, "messages": req.messages}
        else:
            path, body = "/completions", {"model": model, "prompt": req.prompt}
        resp = await self.openai().post(path, body={**body, **params}, cast_to=dict)
        choices = resp["choices"]
        if not choices:
            raise ValueError("no choices in the answer")
        if req.kind == "chat":
            texts = [c["message"].get("content") or "" for c in choices]
        else:
            texts = [c.get("text") or "" for c in choices]
        usage = resp.get("usage")
        if usage:
            pt, ct = int(usage["prompt_tokens"]), int(usage.get("completion_tokens") or 0)
        else:  # some servers omit usage: count our conservative estimate
            pt, ct = req.estimate_prompt_tokens(), sum(len(t) // 3 + 1 for t in texts)
        model_used = resp.get("model") or model
        return CachedAnswer(texts, model_used, pt, ct, cost_usd(model, pt, ct, self.cfg.prices))

    async def aclose(self) -> None:
        """Close the HTTP clients of the running loop (call on the loop that used them)."""
        loop_id = id(asyncio.get_running_loop())
        client = self._clients.pop(loop_id, None)
        if client is not None:
            await client.close()
