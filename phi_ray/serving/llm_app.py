"""GPU serving on vLLM through Ray Serve LLM (``ray.serve.llm``), classifier included.

``phi-ray serve`` (and ``serve/app.py``) build this application instead of the transformers
one (:func:`phi_ray.serving.app.build_app`) when :func:`choose_engine` says ``vllm``: the
config asks for it, or it is ``auto`` and both CUDA and vLLM are present where the app is
built. The application is three deployments:

- ``LLMServer:<model>`` (Ray's): one vLLM engine per replica on a placement group of
  ``tensor_parallel_size`` GPUs (with the accelerator type hint when
  ``serve.accelerator_type`` is set), built by Ray on the replica's own event loop;
- ``QualityScorer`` (ours, :mod:`phi_ray.serving.deployments`): the quality classifier;
- the ingress: Ray's ``OpenAiIngress`` (completions, chat, models, tokenize/detokenize from
  vLLM's own OpenAI layer) plus ``/v1/quality`` and ``/healthz``
  (:mod:`phi_ray.serving.llm_ingress`).

Everything here except :func:`build_vllm_app` runs without vLLM: ``ray.serve.llm`` itself
cannot be imported without an engine package (its package ``__init__`` loads vLLM's protocol
models), so the config is built with the same pydantic ``LLMConfig`` class from the module
that defines it, and the CPU tests check it. The vLLM version is the one Ray pins: ray 2.60's
``ray[llm]`` extra requires ``vllm[audio]==0.29.0`` (the ``vllm`` extra of pyproject).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from phi_ray.config import ServeConfig
from phi_ray.serving.placement import replica_options

log = logging.getLogger("phi_ray.serving")

# What `ray[llm]==2.60.0` requires (Requires-Dist: vllm[audio]==0.29.0): the pair Ray tests.
VLLM_VERSION = "0.29.0"
INGRESS_CLASS = "phi_ray.serving.llm_ingress:PhiLLMIngress"


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose_engine(
    scfg: ServeConfig, *, has_vllm: bool | None = None, has_cuda: bool | None = None
) -> Literal["transformers", "vllm"]:
    """``vllm`` when asked for, or on ``auto`` when CUDA and vLLM are both here; else the
    transformers engine. ``engine: vllm`` without vLLM is an error, not a silent fallback:
    a CPU head that deploys to GPU workers sets ``engine: vllm`` and installs the extra."""
    if scfg.engine == "transformers":
        return "transformers"
    has_vllm = vllm_installed() if has_vllm is None else has_vllm
    if scfg.engine == "vllm":
        if not has_vllm:
            raise RuntimeError(
                "serve.engine=vllm needs vLLM where the application is built: "
                f"pip install 'phi-ray[vllm]' (vllm=={VLLM_VERSION}, the version ray 2.60 pins)"
            )
        return "vllm"
    if has_cuda is None:
        from phi_ray.runtime import cuda_available

        has_cuda = cuda_available()
    return "vllm" if has_vllm and has_cuda else "transformers"


def _llm_config_cls() -> type:
    """``ray.serve.llm.LLMConfig`` where it imports (vLLM installed); else the class it
    subclasses unchanged, from the module that defines it (importable without vLLM)."""
    try:
        from ray.serve.llm import LLMConfig
    except ImportError:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    return LLMConfig


def _replicas(scfg: ServeConfig) -> dict[str, Any]:
    # vLLM batches continuously: a replica takes several batches' worth at once; a new
    # replica loads weights and captures CUDA graphs: minutes, not seconds, to scale down.
    return replica_options(scfg, 4 * scfg.max_batch_size, downscale_delay_s=600)


def llm_config(scfg: ServeConfig, model_dir: str) -> Any:
    """The ``LLMConfig`` of the vLLM deployment for ``model_dir`` (a local directory, or an
    ``s3://`` / ``gs://`` export that Ray mirrors onto each GPU node)."""
    source: Any = {"bucket_uri": model_dir} if "://" in model_dir else model_dir
    engine_kwargs: dict[str, Any] = {
        "tensor_parallel_size": scfg.tensor_parallel_size,
        "gpu_memory_utilization": scfg.gpu_memory_utilization,
        "enforce_eager": scfg.enforce_eager,
    }
    extra: dict[str, Any] = {}
    if 0 < scfg.num_gpus < 1 and scfg.tensor_parallel_size == 1:
        # a share of one GPU (Ray Serve LLM's fractional-GPU placement), leaving the rest of
        # it to the classifier (serve.classifier_num_gpus): both fit a 1-GPU node.
        # gpu_memory_utilization must leave the classifier its memory.
        extra["placement_group_config"] = {"bundles": [{"GPU": scfg.num_gpus}]}
    return _llm_config_cls()(
        model_loading_config={"model_id": scfg.model_name, "model_source": source},
        accelerator_type=scfg.accelerator_type,
        engine_kwargs=engine_kwargs,
        **extra,
        deployment_config={
            **_replicas(scfg),
            "ray_actor_options": {"num_cpus": scfg.num_cpus},
            "health_check_period_s": 10,
            "health_check_timeout_s": 60,
            "graceful_shutdown_timeout_s": 60,
        },
    )


@dataclass
class VLLMAppSpec:
    """Everything the vLLM application is built from, without vLLM."""

    llm_config: Any  # LLMConfig
    scorer: Any | None  # the bound QualityScorer deployment (a serve Application), or None
    ingress_options: dict[str, Any]  # Serve deployment options of the ingress
    ingress_kwargs: dict[str, Any] = field(default_factory=dict)  # PhiLLMIngress arguments


def vllm_app_spec(scfg: ServeConfig, model_dir: str, classifier_dir: str | None) -> VLLMAppSpec:
    """The LLMConfig, the classifier deployment and the ingress options (CPU-testable)."""
    from phi_ray.serving.deployments import bind_scorer

    cfg = llm_config(scfg, model_dir)
    scorer = bind_scorer(scfg, classifier_dir)
    actor: dict[str, Any] = {"num_cpus": 0}
    # The API key reaches the ingress replicas through their environment, never through the
    # app's arguments (which Serve shows in its status).
    key = os.environ.get(scfg.api_key_env)
    if key:
        actor["runtime_env"] = {"env_vars": {scfg.api_key_env: key}}
    return VLLMAppSpec(
        llm_config=cfg,
        scorer=scorer,
        ingress_options={
            "max_ongoing_requests": scfg.max_ongoing_requests,
            "ray_actor_options": actor,
        },
        ingress_kwargs={
            "model_dir": model_dir,
            "max_quality_codes": scfg.classifier_max_batch_size,
        },
    )


def build_vllm_app(scfg: ServeConfig, model_dir: str, classifier_dir: str | None) -> Any:
    """The Serve application on vLLM (needs vLLM installed here; runs on GPU nodes)."""
    from importlib.metadata import version

    from ray import serve
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.serve.llm import build_llm_deployment

    from phi_ray.serving.llm_ingress import PhiLLMIngress, ingress_deployment_class

    if (have := version("vllm")) != VLLM_VERSION:
        log.warning(
            "vllm %s is installed; phi-ray pins %s (what ray 2.60 tests)", have, VLLM_VERSION
        )
    spec = vllm_app_spec(scfg, model_dir, classifier_dir)
    cfg = spec.llm_config
    server = build_llm_deployment(cfg)
    options = maybe_apply_llm_deployment_config_defaults(
        PhiLLMIngress.get_deployment_options([cfg]), spec.ingress_options
    )
    ingress = ingress_deployment_class(scfg.api_key_env)
    return serve.deployment(ingress, **options).bind(
        llm_deployments={cfg.model_id: server},
        model_cards={cfg.model_id: to_model_metadata(cfg.model_id, cfg)},
        scorer=spec.scorer,
        **spec.ingress_kwargs,
    )
