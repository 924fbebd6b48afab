"""Prometheus metrics of the serving API (``GET /metrics``), per ingress replica.

The ingress counts what it sees (requests by route and status, latency to the last byte,
tokens in and out, requests in flight); the model replica counts its dynamic batches
(sizes, and sequences waiting for a batch or running in one) and hands them over in its
``status()``, which the ingress reads at scrape time. Each replica has its own registry,
not prometheus_client's global one, which Ray's own exporters share. With several
replicas, a scrape sees the ingress replica that answered it and the model replica that
the handle picked (Ray's metrics agent has the cluster-wide Serve metrics).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _ModelCollector:
    """Renders the model replica's last ``status()`` as Prometheus metrics."""

    def __init__(self) -> None:
        self.status: dict[str, Any] = {}

    def collect(self) -> Iterable[Metric]:
        st = self.status
        sizes = {int(k): v for k, v in (st.get("batch_sizes") or {}).items()}
        buckets, seen = [], 0
        for le in BATCH_BUCKETS:
            seen = sum(v for k, v in sizes.items() if k <= le)
            buckets.append((str(le), seen))
        buckets.append(("+Inf", sum(sizes.values())))
        total = float(sum(k * v for k, v in sizes.items()))
        yield HistogramMetricFamily(
            "phi_ray_batch_size",
            "Sequences per dynamic batch of the model replica",
            buckets=buckets,
            sum_value=total,
        )
        for key, help_ in (
            ("waiting", "Sequences waiting for a batch (the model replica's queue depth)"),
            ("running", "Sequences in the batch being generated"),
        ):
            yield GaugeMetricFamily(f"phi_ray_sequences_{key}", help_, value=st.get(key, 0))
        up = 1.0 if st.get("state") == "ready" else 0.0
        yield GaugeMetricFamily("phi_ray_model_ready", "1 once the model is loaded", value=up)


class Metrics:
    """The ingress replica's metrics, and an ASGI middleware that records every request."""

    ROUTES = frozenset(
        {
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/models",
            "/v1/quality",
            "/tokenize",
            "/detokenize",
            "/tokenizer_info",
            "/health",
            "/healthz",
            "/version",
            "/metrics",
        }
    )

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "phi_ray_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "phi_ray_request_latency_seconds",
            "Time from request to the last byte of the response",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("phi_ray_requests_in_flight", "Requests being answered", registry=r)
        self.prompt_tokens = Counter("phi_ray_prompt_tokens", "Prompt tokens received", registry=r)
        self.generation_tokens = Counter(
            "phi_ray_generation_tokens", "Completion tokens generated", registry=r
        )
        self.model = _ModelCollector()
        r.register(self.model)

    def tokens(self, prompt: int, completion: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(completion)

    def render(self, model_status: dict[str, Any]) -> bytes:
        self.model.status = model_status
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware: the status and latency of every request, by route."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.m = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        route = path if path in self.m.ROUTES else "other"  # bounded label values
        status, t0 = 500, time.perf_counter()

        async def send_(msg: dict) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        self.m.in_flight.inc()
        try:
            await self.app(scope, receive, send_)
        finally:
            self.m.in_flight.dec()
            self.m.requests.labels(route, str(status)).inc()
            self.m.latency.labels(route).observe(time.perf_counter() - t0)
