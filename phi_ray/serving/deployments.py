"""Ray Serve deployments: the completion model and the quality classifier.

Both load their weights in a background thread, so a replica reports healthy to Serve
while a large checkpoint is still loading (a slow first load never trips the health
check); until it is ready, calls raise :class:`ModelUnavailable` (the ingress answers 503
and ``/healthz`` says "loading"). A load that fails is logged once, with its reason, and
that reason is what ``/healthz`` and every later call report: restarting the replica would
only repeat the same failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve

from phi_ray.serving.engine import SeqEvent, SeqSpec, merge_events
from phi_ray.serving.errors import ModelUnavailable

log = logging.getLogger("ray.serve")


class _BackgroundLoad:
    """Runs ``load()`` in a thread; ``state`` is loading / ready / error."""

    def __init__(self, what: str, load: Callable[[], Any]) -> None:
        self.what = what
        self.value: Any = None
        self.error: str | None = None
        self.ready = threading.Event()
        self._t0 = time.monotonic()
        threading.Thread(target=self._run, args=(load,), daemon=True, name=f"load-{what}").start()

    def _run(self, load: Callable[[], Any]) -> None:
        try:
            self.value = load()
            log.info("%s loaded in %.1fs", self.what, time.monotonic() - self._t0)
        except Exception as e:
            self.error = f"{self.what} failed to load: {type(e).__name__}: {e}"
            log.error(self.error)  # once: every later call reports this string instead
        finally:
            self.ready.set()

    @property
    def state(self) -> str:
        if not self.ready.is_set():
            return "loading"
        return "error" if self.error else "ready"

    def get(self) -> Any:
        if self.error:
            raise ModelUnavailable(self.error)
        if not self.ready.is_set():
            secs = time.monotonic() - self._t0
            raise ModelUnavailable(f"{self.what} is still loading ({secs:.0f}s so far); retry")
        return self.value


def _n_seqs(items: list[list[SeqSpec]]) -> int:
    return sum(len(x) for x in items)


def _pick_device() -> str:
    """CUDA when Ray gave this replica a GPU (it hides the others), else CPU."""
    from phi_ray.runtime import cuda_available

    return "cuda" if cuda_available() else "cpu"


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class CompletionModel:
    """The phi model behind ``/v1/completions``: transformers with ``@serve.batch`` (vLLM is
    Ray Serve LLM's deployment, :mod:`phi_ray.serving.llm_app`).

    A call carries one prompt's ``n`` sequences (a list of :class:`SeqSpec`); the dynamic
    batch packs calls up to ``max_batch_size`` sequences.
    """

    def __init__(
        self,
        model_dir: str,
        engine: str = "auto",
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.01,
        batch_wait_max_s: float = 0.1,
    ) -> None:
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.waits = (batch_wait_timeout_s, max(batch_wait_timeout_s, batch_wait_max_s))
        self.model_dir = model_dir
        # waiting: sequences queued for a batch; running: in the batch being generated.
        self.counts = {"batches": 0, "sequences": 0, "waiting": 0, "running": 0}
        self.batch_sizes: dict[int, int] = {}  # sequences per batch -> batches (/metrics)
        device = _pick_device()
        self.load = _BackgroundLoad(
            f"model {model_dir}", lambda: _load_engine(model_dir, engine, device)
        )

    def status(self) -> dict[str, Any]:
        """Load state, and batch counts (mean batch size = sequences / batches)."""
        return {
            "state": self.load.state,
            "detail": self.load.error,
            **self.counts,
            "batch_sizes": dict(self.batch_sizes),
        }

    def check_health(self) -> None:
        """Liveness only: loading and failed-to-load replicas stay up and say why (/healthz)."""

    async def stream(self, specs: list[SeqSpec]) -> AsyncIterator[list[SeqEvent]]:
        """Yield event lists as text is generated; the last event of each sequence finishes it."""
        self.load.get()  # 503 while the model loads, or with the reason it failed to
        # Queue depth: sequences with no output yet (waiting for a batch).
        waiting = True
        self.counts["waiting"] += len(specs)
        try:
            async for events in self._batched(specs):
                if waiting:
                    self.counts["waiting"] -= len(specs)
                    waiting = False
                if events:
                    yield events
        finally:
            if waiting:
                self.counts["waiting"] -= len(specs)

    async def complete(self, specs: list[SeqSpec]) -> list[SeqEvent]:
        """Generate to the end; one event per sequence with its whole text."""
        events = []
        async for evs in self.stream(specs):
            events += evs
        return merge_events(len(specs), events)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01, batch_size_fn=_n_seqs)
    async def _batched(self, items: list[list[SeqSpec]]) -> AsyncIterator[list[Any]]:
        """One ``generate`` for the whole batch; per-step deltas routed back to each call."""
        engine = self.load.get()
        owner, flat = [], []
        self.counts["batches"] += 1
        # Clients that shared this batch come back together when it ends, but spread out
        # over their round trips: while traffic is concurrent, hold the next batch open
        # longer (it starts at once when full); a lone client keeps the short wait.
        self._batched.set_batch_wait_timeout_s(self.waits[len(items) > 1])
        for k, specs in enumerate(items):
            owner += [(k, j) for j in range(len(specs))]
            flat += specs
        self.counts["sequences"] += len(flat)
        self.counts["running"] += len(flat)
        self.batch_sizes[len(flat)] = self.batch_sizes.get(len(flat), 0) + 1
        try:
            async for out in self._generate(engine, items, owner, flat):
                yield out
        finally:
            self.counts["running"] -= len(flat)

    async def _generate(
        self, engine: Any, items: list[list[SeqSpec]], owner: list[tuple[int, int]], flat: list
    ) -> AsyncIterator[list[Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        job = loop.run_in_executor(
            None, engine.generate, flat, lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)
        )
        job.add_done_callback(lambda _: queue.put_nowait(None))
        left = [len(s) for s in items]
        done = False
        while not done:
            events = [await queue.get()]
            while not queue.empty():  # coalesce steps that piled up while we were away
                events.append(queue.get_nowait())
            if events[-1] is None:
                done = True
                events.pop()
            per_item: list[Any] = [[] for _ in items]
            for ev in (e for step in events for e in step):
                k, j = owner[ev.seq]
                per_item[k].append(dataclasses.replace(ev, seq=j))
                left[k] -= ev.finish_reason is not None
            yield [
                StopIteration if left[k] <= 0 and not per_item[k] else per_item[k]
                for k in range(len(items))
            ]
        job.result()  # surface an engine error to every caller


def _load_engine(model_dir: str, engine: str, device: str) -> Any:
    from phi_ray.runtime import pick_dtype
    from phi_ray.train.data import localize

    model_dir = localize(model_dir)  # an object-store model: this node's one local copy

    # vLLM never runs in this deployment: it is served by Ray Serve LLM's LLMServer
    # (phi_ray.serving.llm_app), which builds its engine on the replica's own event loop.
    # (Built here, in the loader thread, older vLLM V1 releases failed: they must not be
    # built off the main thread. Ray Serve LLM with its pinned vLLM is the tested pair.)
    if engine == "vllm":
        raise RuntimeError("serve.engine=vllm is served by phi_ray.serving.llm_app, not here")
    from phi_ray.serving.engine import HFEngine

    return HFEngine.load(model_dir, device=device, dtype=pick_dtype("auto", device))


def replica_device(gpu_ids: list | None = None, cuda: bool | None = None) -> str:
    """Where a replica's torch model goes: CUDA when Ray assigned the replica a GPU or a share
    of one (``ray.get_gpu_ids()``; Ray then makes that GPU the visible one) and torch sees
    it, else CPU. A replica with no GPU share stays on CPU even on a GPU node, where the GPU
    belongs to another replica's reservation."""
    if gpu_ids is None:
        import ray

        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    if not gpu_ids:
        return "cpu"
    if cuda is None:
        from phi_ray.runtime import cuda_available

        cuda = cuda_available()
    if not cuda:
        logging.getLogger("phi_ray.serving").warning(
            "Ray assigned GPU %s but torch sees no CUDA device: loading on CPU", gpu_ids
        )
        return "cpu"
    return "cuda"


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class QualityScorer:
    """The quality classifier behind ``/v1/quality``: batched embed + random-forest predict."""

    def __init__(self, classifier_dir: str, max_batch_size: int = 64) -> None:
        self._batched.set_max_batch_size(max_batch_size)
        self.classifier_dir = classifier_dir
        self.load = _BackgroundLoad(f"classifier {classifier_dir}", self._load)

    def _load(self) -> Any:
        from phi_ray.quality.classifier import QualityClassifier

        # the embedder on the GPU share this deployment holds (classifier_num_gpus), if any
        return QualityClassifier.load(self.classifier_dir, device=replica_device())

    def status(self) -> dict[str, Any]:
        return {"state": self.load.state, "detail": self.load.error}

    def check_health(self) -> None:
        """Liveness only, as for the model."""

    async def score(self, codes: list[str]) -> dict[str, Any]:
        clf = self.load.get()
        probs, kept = await self._batched(codes)
        return {"scores": probs, "kept": kept, "threshold": float(clf.threshold)}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=_n_seqs)
    async def _batched(self, items: list[list[str]]) -> list[tuple[list[float], list[bool]]]:
        clf = self.load.get()
        flat = [c for codes in items for c in codes]
        probs, kept = await asyncio.to_thread(clf.score, flat)
        out, i = [], 0
        for codes in items:
            j = i + len(codes)
            out.append(([float(p) for p in probs[i:j]], [bool(x) for x in kept[i:j]]))
            i = j
        return out


def bind_scorer(scfg: Any, classifier_dir: str | None) -> Any:
    """The classifier deployment as both applications (transformers and vLLM) bind it, with
    the resources ``scfg`` (a ServeConfig) gives it; None without a classifier."""
    if not classifier_dir:
        return None
    return QualityScorer.options(
        ray_actor_options={
            "num_cpus": scfg.classifier_num_cpus,
            "num_gpus": scfg.classifier_num_gpus,
        },
        max_ongoing_requests=max(64, 2 * scfg.classifier_max_batch_size),
    ).bind(classifier_dir, scfg.classifier_max_batch_size)
