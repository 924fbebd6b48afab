"""``phi-ray serve``: run the Serve application locally (or on ``run.ray_address``) until Ctrl-C.

The model is ``serve.model`` (``--model DIR``), else the run's ``finetune/model/``, else
its ``pretrain/model/``; the classifier is ``serve.classifier`` (``--classifier DIR``),
else the run's ``classify/classifier/`` when that stage is complete, else none (then
``/v1/quality`` answers 503).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request

from phi_ray.config import Config
from phi_ray.runs import RunDir, StageResult
from phi_ray.runtime import init_ray

log = logging.getLogger("phi_ray.serving")
APP_NAME = "phi-ray"


def resolve_inputs(cfg: Config, run: RunDir) -> tuple[str, str | None]:
    """(model dir, classifier dir or None) from the config, else the run's outputs."""
    model = cfg.serve.model
    if model is None:
        for stage in ("finetune", "pretrain"):
            if run.is_complete(stage):
                model = run.path(stage, "model")
                break
        else:
            raise FileNotFoundError(
                f"serve needs a model: pass --model DIR, or finish `phi-ray pretrain --run "
                f"{run.name}` (or finetune) first; neither is complete in {run.uri}"
            )
    clf = cfg.serve.classifier
    if clf is None and run.is_complete("classify"):
        clf = run.path("classify", "classifier")
    return model, clf


def wait_ready(url: str, timeout_s: float = 600.0) -> dict:
    """Poll ``/healthz`` until the model is loaded; raise with the replica's reason if not."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # 503: loading, or failed
            body = json.loads(e.read() or b"{}")
            if body.get("status") == "error":
                msg = body.get("detail") or "the model failed to load"
                raise ValueError(f"serve: {msg}") from None
            if body.get("status") != last:
                log.info("waiting for the model: %s", body.get("status"))
                last = body.get("status")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise TimeoutError(f"serve: {url}/healthz not ready after {timeout_s:.0f}s")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (Kubernetes, systemd, ``kill``) both shut Serve down cleanly.
    SIGINT is re-armed because a shell starts background jobs (``cmd &``, nohup) with it
    ignored, and Python keeps an inherited SIG_IGN: Ctrl-C would then do nothing."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers belong to the main thread (serve from a library call)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def run(cfg: Config, run: RunDir) -> StageResult:
    """Deploy the app, wait until it is ready, then serve until interrupted."""
    from ray import serve

    from phi_ray.serving.app import build_app
    from phi_ray.serving.llm_app import choose_engine

    model_dir, clf_dir = resolve_inputs(cfg, run)
    vllm = choose_engine(cfg.serve) == "vllm"
    if vllm:
        # Ray Serve LLM reads the driver's runtime context while it builds the app (the
        # LLMServer's options): without Ray up, that call would start a default local Ray
        init_ray(cfg)
    app = build_app(cfg.serve, model_dir, clf_dir)  # checks the inputs before deploying
    init_ray(cfg)
    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port})
    url = f"http://{s.host}:{s.port}"
    _stop_on_signals()
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        wait_ready(url)
        engine = "vLLM (Ray Serve LLM)" if vllm else "transformers"
        print(f"phi-ray serve: {s.model_name} from {model_dir} at {url}/v1 on {engine}", flush=True)
        print(f"  classifier: {clf_dir or 'none'}; OpenAPI at {url}/docs; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("phi-ray serve: shutting down", flush=True)
    finally:
        serve.shutdown()
    return StageResult(stage="serve", path=url, success={"counts": {}})
