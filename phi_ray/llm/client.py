"""The LLM client: cache, global limiter, retries with backoff, budgets, parse-and-repair.

See :mod:`phi_ray.llm` for the public API and an example.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from phi_ray.llm.budget import find_price
from phi_ray.llm.cache import CachedAnswer, ResponseCache
from phi_ray.llm.limiter import make_limiter
from phi_ray.llm.transport import BUSY, PENDING, Transport, parse_body
from phi_ray.llm.types import (
    REPAIR_PROMPT,
    BatchResult,
    Failure,
    LLMError,
    ParseError,
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
        self._check_priced(self.model)
        self.sync: Any = None  # a CacheSync for object-store runs
        if cache_dir is not None and "://" in cache_dir:
            # SQLite needs a local file: a working copy, restored from and synced back to
            # the run's .work/<stage>/ in the object store.
            from phi_ray.llm.sync import CacheSync  # pyarrow: only object-store runs pay it

            self.sync = CacheSync(cache_dir, cfg.cache_sync_s)
            cache_dir = self.sync.restore()
        self.cache = ResponseCache(cache_dir) if cache_dir is not None else None
        if self.sync is not None and self.cache is not None:
            self.sync.start(self.cache)
        key = self.cache.path if self.cache is not None else "nocache"
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
        """Close HTTP clients, stop the helper loop, release the limiter (owner: kill it),
        drop this process's leases, and (object-store runs) sync the cache back."""
        if self._bg is not None:
            loop, thread = self._bg
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._t.aclose(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._bg = None
        self.limiter.close()
        if self.cache is not None:
            with contextlib.suppress(Exception):
                self.cache.release_all()
            if self.sync is not None:
                self.sync.stop()  # the final upload, from a consistent snapshot
            self.cache.close()

    def _check_priced(self, model: str) -> None:
        if self.cfg.budget_usd is not None and find_price(model, self.cfg.prices) is None:
            # Unpriced, its calls would cost $0 against the budget: no budget at all.
            raise LLMError(
                f"llm.budget_usd is set but llm.prices has no entry for model {model!r}; "
                f"add llm.prices.{model}: {{input: <USD/1M>, output: <USD/1M>}}"
            )

    def cache_key(self, req: Request) -> str:
        """The cache key of ``req`` as this client asks it (endpoint, model, parameters)."""
        return req.cache_key(req.model or self.model, self._params(req), self._t.endpoint)

    def cached_answer(self, req: Request) -> CachedAnswer | None:
        """What the cache holds for ``req`` (e.g. what its answer cost when first paid)."""
        return self.cache.get(self.cache_key(req)) if self.cache is not None else None

    def _params(self, req: Request) -> dict[str, Any]:
        params = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        params.update(req.params)
        if params.get("max_tokens") is None and params.get("max_completion_tokens") is None:
            # never an uncapped answer: the budget reserves the cap
            params["max_tokens"] = self.cfg.max_tokens
        return params

    async def _ensure_configured(self) -> None:
        if self._configured:
            return
        if self._config_lock is None:
            self._config_lock = asyncio.Lock()
        async with self._config_lock:  # concurrent first calls must not reset it twice
            if self._configured:
                return
            ratio = None
            if self.cache is not None:
                self._recover()
                ratio = self.cache.out_ratio()
                self._t.ratio = max(1.0, ratio or 1.0)
            # The budget counts what this cache has paid for in earlier runs too.
            spent = self.cache.totals()[:2] if self.cache is not None else (0, 0.0)
            ttl = self.cfg.timeout_s * 1.5 + 30.0
            await self.limiter.configure(
                self.cfg.max_concurrency,
                ttl,
                self.cfg.budget_tokens,
                self.cfg.budget_usd,
                spent,
                not self._attach,
                ratio,
            )
            self._configured = True

    def _recover(self) -> None:
        """Settle answers a killed process committed but never parsed, and say what it had
        in flight (those requests may have been paid; they are asked again)."""
        assert self.cache is not None
        settled = self.cache.settle_raw(lambda raw, sent: parse_body(raw, sent, self.cfg.prices))
        orphans = self.cache.orphans()
        self.cache.drop(k for k, *_ in orphans)  # reported once; a claim would take them over
        self.stats["recovered_raw"] += settled
        self.stats["inflight_at_start"] += len(orphans)
        if orphans:
            ids = ", ".join(o[1] for o in orphans[:5])
            log.warning(
                "%d LLM requests were in flight when an earlier process stopped (%s%s); they "
                "may have been paid, and are asked again",
                len(orphans),
                ids,
                ", ..." if len(orphans) > 5 else "",
            )

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
        before = Counter(self.stats)  # the first batch also reports what start-up recovered
        await self._ensure_configured()
        self._t.stop = None
        self._t.fatal = None
        queue = list(enumerate(requests))
        queue.reverse()
        slots: list[Result | Failure | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=desc, disable=not self.progress, mininterval=0.5)

        async def worker() -> None:
            # A fatal error stops this worker taking new requests; the calls other workers
            # have in flight finish, and their paid answers are cached, before it is raised.
            while queue and self._t.fatal is None:
                i, req = queue.pop()
                try:
                    slots[i] = await self.acomplete(req, parser)
                except LLMError as e:
                    self._t.fatal = self._t.fatal or e
                    return
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
        if self._t.fatal is not None:
            raise self._t.fatal
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
        self._check_priced(model)
        params = self._params(req)
        acc = Result(req.id, None, "", model, cached=True, meta=req.meta)
        cur, error = req, ""
        for rnd in range(1 + self.cfg.repair_attempts):
            got = await self._fetch(cur, model, params, acc)
            if got is PENDING:
                self.stats["pending"] += 1
                if self._t.fatal is not None:
                    raise self._t.fatal
                return None
            if isinstance(got, Failure):
                self.stats["failures"] += 1
                return got
            acc.texts = got.texts
            acc.text = got.texts[0] if got.texts else ""
            try:
                if got.status != "ok":  # a billed 200 nobody can read: repair, never replay
                    acc.text = (got.raw or b"").decode("utf-8", "replace")[:2000]
                    raise ParseError(got.error or "malformed response")
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
        key = req.cache_key(model, params, self._t.endpoint)
        poll = 0.02
        while True:
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                return hit
            waiting = self._inflight.get(key)
            if waiting is not None:
                # The same call is in flight in this process: wait for it, never pay twice.
                await asyncio.shield(waiting)
                continue
            fut = asyncio.get_running_loop().create_future()
            self._inflight[key] = fut
            got = None
            try:
                got = await self._t.call(req, model, params, key, acc)
            finally:
                self._inflight.pop(key, None)
                fut.set_result(None)
                if self.cache is not None and got is not BUSY and not isinstance(got, CachedAnswer):
                    self.cache.release(key)  # no answer: this process's lease ends
            if got is not BUSY:
                break
            # Another process holds this prompt's lease: its answer will land in the cache
            # (or its lease lapses and we take over). Poll; hold no slot meanwhile.
            self.stats["waited_for_other_process"] += 1
            await asyncio.sleep(poll)
            poll = min(poll * 1.5, 0.5)
        return got
