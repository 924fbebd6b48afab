"""``/healthz`` is ready only when the model *and* the classifier are: ``phi-ray serve``
prints its ready line on it, and a first ``/v1/quality`` after that must not be a 503
(the rehearsal's serve-from-S3 check caught a classifier still loading). vLLM's
``/health`` stays the model's alone. The real routes, on a FastAPI app, with replicas
that report fixed states the way Serve handles do (``status.remote()`` awaited)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from phi_ray.serving.routes import add_routes


class _Call:
    def __init__(self, state: str) -> None:
        self.state = state

    async def remote(self) -> dict:
        return {"state": self.state, "detail": "boom" if self.state == "error" else None}


class _Replica:
    def __init__(self, state: str) -> None:
        self.status = _Call(state)


class _Ingress:
    def __init__(self, model: str, clf: str | None) -> None:
        self.model = _Replica(model)
        self.scorer = _Replica(clf) if clf else None


@pytest.mark.parametrize(
    ("model", "clf", "status"),
    [
        ("ready", "ready", "ok"),
        ("ready", None, "ok"),
        ("ready", "loading", "loading"),  # the case that was "ok"
        ("loading", "ready", "loading"),
        ("ready", "error", "error"),
        ("error", "loading", "error"),
    ],
)
def test_healthz_waits_for_the_classifier_too(model, clf, status):
    app = FastAPI()
    add_routes(app, _Ingress(model, clf))
    with TestClient(app) as c:
        r = c.get("/healthz")
        assert r.json()["status"] == status
        assert r.status_code == (200 if status == "ok" else 503)
        if model == "ready":  # vLLM's /health: the model's alone
            assert c.get("/health").status_code == 200
