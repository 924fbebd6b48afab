"""The vLLM completion engine (GPU only): continuous batching inside vLLM itself.

Used when ``serve.engine`` is ``auto`` or ``vllm``, the replica has a GPU and ``vllm`` is
installed (the ``gpu`` extra). Every sequence becomes one vLLM request with its own
sampling parameters, seed and (prompt) logprobs; vLLM's scheduler batches them per step,
so no ``@serve.batch`` is needed in front of it. vLLM's logprobs are of the raw model
distribution by default, as the transformers engine's are. Not exercised by the CPU test
suite.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator
from typing import Any

from phi_ray.serving.engine import SeqEvent, SeqSpec, TokenLogprobs


def _logprobs(ids: Any, steps: Any, k: int) -> TokenLogprobs:
    """vLLM's per-position ``{token id: Logprob}`` dicts (None for a prompt's first token)
    as :class:`TokenLogprobs`: the chosen token's logprob and the top ones by rank."""
    res = TokenLogprobs()
    for tid, step in zip(ids, steps, strict=False):
        res.ids.append(int(tid))
        if step is None:
            res.logprobs.append(None)
            res.top.append(None)
            continue
        res.logprobs.append(float(step[tid].logprob))
        # The dict holds the top k (rank 1..k) and the chosen token, whatever its rank.
        top = sorted((lp.rank or 10**9, int(t), float(lp.logprob)) for t, lp in step.items())
        res.top.append([(t, v) for rank, t, v in top if rank <= k])
    return res


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMEngine:
    continuous = True  # requests join the running batch every step

    def __init__(self, engine: Any, max_context: int) -> None:
        self.engine = engine
        self.max_context = max_context

    @classmethod
    def load(cls, model_dir: str, gpu_memory_utilization: float = 0.85) -> VLLMEngine:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(
            model=model_dir, tokenizer=model_dir, gpu_memory_utilization=gpu_memory_utilization
        )
        engine = AsyncLLMEngine.from_engine_args(args)
        # vLLM V1's AsyncLLM has model_config itself; V0 kept it on the inner engine.
        mcfg = getattr(engine, "model_config", None) or engine.engine.model_config
        return cls(engine, int(mcfg.max_model_len))

    async def _one(self, i: int, spec: SeqSpec, out: asyncio.Queue) -> None:
        from vllm import SamplingParams

        # vLLM needs max_tokens >= 1: echo-only (0) generates one token and drops it, as
        # vLLM's own OpenAI server does.
        params = SamplingParams(
            n=1,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=max(1, spec.max_tokens),
            stop=spec.stop or None,
            seed=spec.seed,
            logprobs=spec.logprobs,
            prompt_logprobs=spec.prompt_logprobs,
        )
        sent = n_lp = 0
        first = True
        prompt = {"prompt_token_ids": spec.prompt_ids}
        try:
            async for res in self.engine.generate(prompt, params, request_id=uuid.uuid4().hex):
                c = res.outputs[0]
                ev = SeqEvent(i, c.text[sent:], len(c.token_ids))
                if first and spec.prompt_logprobs is not None:
                    ev.prompt_logprobs = _logprobs(
                        spec.prompt_ids, res.prompt_logprobs, spec.prompt_logprobs
                    )
                first = False
                if spec.logprobs is not None:
                    ev.logprobs = _logprobs(
                        c.token_ids[n_lp:], (c.logprobs or [])[n_lp:], spec.logprobs
                    )
                    n_lp = len(c.token_ids)
                if res.finished:
                    ev.finish_reason = "length" if c.finish_reason == "length" else "stop"
                if spec.max_tokens == 0:  # echo only: none of the generated token
                    if not res.finished:
                        continue
                    ev.text, ev.n_tokens, ev.finish_reason = "", 0, "length"
                    ev.logprobs = None if spec.logprobs is None else TokenLogprobs()
                await out.put(ev)
                sent = len(c.text)
        except Exception as e:  # handed to the consumer, which re-raises it
            await out.put(e)

    async def stream(self, specs: list[SeqSpec]) -> AsyncIterator[list[SeqEvent]]:
        """Yield events of all ``specs`` as vLLM produces them (cumulative text -> deltas)."""
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._one(i, s, queue)) for i, s in enumerate(specs)]
        left = len(specs)
        try:
            while left:
                events = [await queue.get()]
                while not queue.empty():
                    events.append(queue.get_nowait())
                for e in events:
                    if isinstance(e, Exception):
                        raise e
                left -= sum(e.finish_reason is not None for e in events)
                yield events
        finally:
            for t in tasks:  # a client that went away stops its vLLM requests
                t.cancel()
