"""The vLLM completion engine (GPU only): continuous batching inside vLLM itself.

Used when ``serve.engine`` is ``auto`` or ``vllm``, the replica has a GPU and ``vllm`` is
installed (the ``gpu`` extra). Every sequence becomes one vLLM request with its own
sampling parameters and seed; vLLM's scheduler batches them per step, so no
``@serve.batch`` is needed in front of it. Not exercised by the CPU test suite.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import AsyncIterator
from typing import Any

from phi_ray.serving.engine import SeqEvent, SeqSpec


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

        params = SamplingParams(
            n=1,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_tokens=spec.max_tokens,
            stop=spec.stop or None,
            seed=spec.seed,
        )
        sent = 0
        prompt = {"prompt_token_ids": spec.prompt_ids}
        try:
            async for res in self.engine.generate(prompt, params, request_id=uuid.uuid4().hex):
                c = res.outputs[0]
                finish = None
                if res.finished:
                    finish = "length" if c.finish_reason == "length" else "stop"
                await out.put(SeqEvent(i, c.text[sent:], len(c.token_ids), finish))
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
