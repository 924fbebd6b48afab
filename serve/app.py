"""Ray Serve application builder for phi-ray (``serve run`` / ``serve deploy``).

    serve run serve.app:app_builder model=runs/tiny/finetune/model classifier=runs/tiny/classify/classifier
    serve deploy serve/config.yaml          # the production shape: autoscaling, GPUs

``args`` are ``serve.*`` config keys (``model``, ``classifier``, ``max_batch_size``, ...)
applied over ``preset`` (default ``tiny``). Deployment options in ``serve/config.yaml``
(replicas, autoscaling, GPUs) override the ones the preset gives. The optional API key is
read from the ingress replicas' environment (``serve.api_key_env``, PHI_RAY_API_KEY by
default): set it on the cluster's nodes or in the application's ``runtime_env.env_vars``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from phi_ray.config import load_config
from phi_ray.serving.app import build_app


def app_builder(args: dict[str, Any]) -> Application:
    """Build the application from ``{"preset": ..., "model": DIR, "classifier": DIR, ...}``."""
    args = dict(args or {})
    preset = str(args.pop("preset", "tiny"))
    cfg = load_config(preset, [f"serve.{k}={v}" for k, v in args.items()])
    if cfg.serve.model is None:
        raise ValueError("serve/app.py: pass model=DIR (a Hugging Face-format model directory)")
    return build_app(cfg.serve, cfg.serve.model, cfg.serve.classifier)
