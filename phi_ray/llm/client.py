"""The LLM client: cache, global limiter, retries with backoff, budgets, parse-and-repair.

See :mod:`phi_ray.llm` for the public API and an example.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from phi_ray.llm.budget import find_price
from phi_ray.llm.cache import CachedAnswer, ResponseCache
from phi_ray.llm.limiter import make_limiter
from phi_ray.llm.transport import PENDING, Transport
from phi_ray.llm.types import (
    REPAIR_PROMPT,
    BatchResult,
    Failure,
    LLMError,
    Parser,
    Request,
    Result,
)

log = logging.getLogger("phi_ray.llm")


class LLMClient:
    """All of phi-ray's LLM calls go through one of these (see :mod:`phi_ray.llm`).

    ``cache_dir``: where the SQLite response cache lives (a stage passes
    ``run.work_path(stage)``); None disables caching (only for throwaway calls).
    ``scope`` names the global limiter and budget (default: derived from the cache path,
    so clients sharing a cache share a limit). ``attach=True`` in Ray workers that join a
    driver's client: they share its limiter and never reset or kill it. ``use_ray``:
    None = a Ray actor limiter iff Ray is initialised.
    """

    def __init__(
        self,
        cfg: Any,  # LLMConfig
        cache_dir: str | None,
        *,
        model: str | None = None,
        scope: str | None = None,
        attach: bool = False,
        use_ray: bool | None = None,
        progress: bool = True,
    ) -> None:
        if not cfg.base_url:
            raise LLMError(
                "llm.base_url is not set: point it at an OpenAI-compatible endpoint "
                "(https://api.openai.com/v1, a vLLM server, or `phi-ray serve`)"
            )
        self.cfg = cfg
        self.model = model or cfg.model
        self.progress = progress
        if cfg.budget_usd is not None and find_price(self.model, cfg.prices) is None:
            raise LLMError(
                f"llm.budget_usd is set but llm.prices has no entry for model {self.model!r}; "
                f"add llm.prices.{self.model}: {{input: <USD/1M>, output: <USD/1M>}}"
            )
        if cache_dir is not None and "://" in cache_dir:
            # SQLite needs a local file: object-store runs cache on local disk.
            local = os.path.join(
                tempfile.gettempdir(),
                "phi_ray_llm",
                hashlib.sha256(cache_dir.encode()).hexdigest()[:16],
            )
            log.warning(
                "LLM cache for %s kept locally at %s (SQLite needs local disk)", cache_dir, local
            )
            cache_dir = local
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        key = self.cache.path if self.cache else "nocache"
        self.scope = scope or hashlib.sha256(key.encode()).hexdigest()[:16]
        self._attach = attach
        self.limiter = make_limiter(self.scope, owner=not attach, use_ray=use_ray)
        self._configured = False
        self._config_lock: asyncio.Lock | None = None
        api_key = os.environ.get(cfg.api_key_env)
        if not api_key:
            log.info(
                "%s is not set; sending no real API key (fine for local servers)", cfg.api_key_env
            )
        self.stats: Counter[str] = Counter()
        self._t = Transport(cfg, self.cache, self.limiter, self.stats, api_key)
        self._inflight: dict[str, asyncio.Future] = {}
        self._bg: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> LLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close HTTP clients, stop the helper loop, release the limiter (owner: kill it)."""
        if self._bg is not None:
            loop, thread = self._bg
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._t.aclose(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._bg = None
        self.limiter.close()
        if self.cache is not None:
            self.cache.close()

    async def _ensure_configured(self) -> None:
        if self._configured:
            return
        if self._config_lock is None:
            self._config_lock = asyncio.Lock()
        async with self._config_lock:  # concurrent first calls must not reset it twice
            if self._configured:
                return
            # The budget counts what this cache has paid for in earlier runs too.
            spent = self.cache.totals()[:2] if self.cache else (0, 0.0)
            ttl = self.cfg.timeout_s * 1.5 + 30.0
            await self.limiter.configure(
                self.cfg.max_concurrency,
                ttl,
                self.cfg.budget_tokens,
                self.cfg.budget_usd,
                spent,
                not self._attach,
            )
            self._configured = True

    # -- public API ---------------------------------------------------------------------
    def run_batch(
        self,
        requests: Sequence[Request],
        parser: Parser | None = None,
        desc: str = "llm",
    ) -> BatchResult:
        """Synchronous :meth:`arun`, safe to call from a driver, a Ray task or a UDF
        (it runs on the client's own event-loop thread, so an outer loop does not matter)."""
        if self._bg is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="phi-ray-llm", daemon=True)
            thread.start()
            self._bg = (loop, thread)
        fut = asyncio.run_coroutine_threadsafe(self.arun(requests, parser, desc), self._bg[0])
        try:
            return fut.result()
        except BaseException:
            fut.cancel()
            raise

    async def arun(
        self, requests: Sequence[Request], parser: Parser | None = None, desc: str = "llm"
    ) -> BatchResult:
        """Answer many requests concurrently; see :mod:`phi_ray.llm` for the semantics."""
        await self._ensure_configured()
        self._t.stop = None
        before = Counter(self.stats)
        queue = list(enumerate(requests))
        queue.reverse()
        slots: list[Result | Failure | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, mininterval=0.5)

        async def worker() -> None:
            while queue:
                i, req = queue.pop()
                out = await self.acomplete(req, parser)
                slots[i] = out
                bar.update(1)
                self._postfix(bar)

        n_workers = max(1, min(len(requests), 2 * self.cfg.max_concurrency))
        tasks = [asyncio.ensure_future(worker()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            bar.close()
        return self._batch(requests, slots, before)

    def _batch(self, requests, slots, before: Counter) -> BatchResult:
        out = BatchResult(budget_message=self._t.stop)
        for req, s in zip(requests, slots, strict=True):
            if isinstance(s, Result):
                out.results.append(s)
            elif isinstance(s, Failure):
                out.failures.append(s)
            else:
                out.pending.append(req.id)
        stats = {k: v - before.get(k, 0) for k, v in self.stats.items()}
        stats["cost_usd"] = round(stats.get("cost_usd", 0.0), 6)
        if self.cache is not None:
            tok, usd, n = self.cache.totals()
            stats.update(
                cache_entries=n, total_tokens_all_runs=tok, total_cost_usd_all_runs=round(usd, 6)
            )
        stats["model"] = self.model
        out.stats = stats
        return out

    def _postfix(self, bar: tqdm) -> None:
        s = self.stats
        bar.set_postfix(
            tok=s["prompt_tokens"] + s["completion_tokens"],
            usd=f"{s['cost_usd']:.4f}",
            cached=s["cache_hits"],
            retries=s["retries"],
            failed=s["failures"],
            refresh=False,
        )

    async def acomplete(
        self, req: Request, parser: Parser | None = None
    ) -> Result | Failure | None:
        """One request: cache, limiter, retries, parse and repair.

        Returns a :class:`Result`, a :class:`Failure`, or None when a budget refused it.
        Raises :class:`LLMError` when the endpoint rejects the configuration itself.
        """
        await self._ensure_configured()
        self.stats["requests"] += 1
        model = req.model or self.model
        params = {
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
            **req.params,
        }
        acc = Result(req.id, None, "", model, cached=True, meta=req.meta)
        cur, error = req, ""
        for rnd in range(1 + self.cfg.repair_attempts):
            got = await self._fetch(cur, model, params, acc)
            if got is PENDING:
                self.stats["pending"] += 1
                return None
            if isinstance(got, Failure):
                self.stats["failures"] += 1
                return got
            acc.texts = got.texts
            acc.text = got.texts[0] if got.texts else ""
            try:
                acc.value = parser(acc.text) if parser is not None else acc.text
            except Exception as e:  # any parser complaint: repair, then report
                error = f"{type(e).__name__}: {e}"
                if cur.kind != "chat" or rnd == self.cfg.repair_attempts:
                    break
                cur = self._repaired(cur, acc.text, error)
                acc.repairs += 1
                self.stats["repairs"] += 1
                continue
            self.stats["cache_hits" if acc.cached else "answered"] += 1
            return acc
        self.stats["failures"] += 1
        self.stats["parse_failures"] += 1
        return Failure(req.id, "parse", error, acc.text, req.meta)

    @staticmethod
    def _repaired(req: Request, text: str, error: str) -> Request:
        instruction = (req.repair or REPAIR_PROMPT).format(error=error[:500])
        messages = [
            *(req.messages or []),
            {"role": "assistant", "content": text},
            {"role": "user", "content": instruction},
        ]
        return Request(
            req.id,
            messages=messages,
            params=req.params,
            prompt_version=req.prompt_version,
            cache_salt=req.cache_salt,
            model=req.model,
            repair=req.repair,
            meta=req.meta,
        )

    # -- one answer: cache, then the API ---------------------------------------------------
    async def _fetch(self, req: Request, model: str, params: dict, acc: Result):
        key = req.cache_key(model, params)
        for _ in range(2):
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                return hit
            waiting = self._inflight.get(key)
            if waiting is None:
                break
            # The same call is in flight for another request: wait for it, never pay twice.
            await asyncio.shield(waiting)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            got = await self._t.call(req, model, params, key, acc)
        finally:
            self._inflight.pop(key, None)
            fut.set_result(None)
        if isinstance(got, CachedAnswer):
            acc.cached = False
            acc.prompt_tokens += got.prompt_tokens
            acc.completion_tokens += got.completion_tokens
            acc.cost_usd += got.cost_usd
        return got
