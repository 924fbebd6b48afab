"""Build the Serve application: model + classifier deployments behind one FastAPI ingress.

``build_app`` checks its inputs on the driver first, so a wrong ``--model`` or
``--classifier`` is one clear error before anything is deployed, not a replica that
fails to start over and over.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray.serve import Application

from phi_ray.config import ServeConfig
from phi_ray.serving.deployments import CompletionModel, bind_scorer
from phi_ray.serving.ingress import Ingress, IngressSettings
from phi_ray.serving.llm_app import choose_engine
from phi_ray.serving.placement import replica_options


def _dir_files(path: str) -> tuple[str, set[str] | None]:
    """(``path`` normalised, the names of the files directly in it, or None when it is no
    directory). A local path is resolved; an ``s3://`` / ``gs://`` URI (an object-store
    run's export) is kept as it is and listed remotely: each replica makes its own node's
    copy with :func:`phi_ray.train.data.localize`, so the driver downloads nothing."""
    if "://" in path:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(path)
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        files = {i.base_name for i in infos if i.type == pafs.FileType.File}
        return path.rstrip("/"), files or None  # an object store has no empty directories
    p = Path(path).expanduser().resolve()
    return str(p), ({f.name for f in p.iterdir() if f.is_file()} if p.is_dir() else None)


def check_model_dir(path: str) -> str:
    """A Hugging Face-format model directory (config.json + weights + tokenizer), local or
    in an object store."""
    path, files = _dir_files(path)
    if files is None:
        raise FileNotFoundError(f"serve.model: {path} is not a directory")
    missing = [f for f in ("config.json", "tokenizer_config.json") if f not in files]
    if missing:
        raise FileNotFoundError(
            f"serve.model: {path} is not a Hugging Face model directory (no {missing[0]}); "
            "pass the model/ directory that pretrain or finetune wrote"
        )
    if not any(f.endswith((".safetensors", ".bin")) for f in files):
        raise FileNotFoundError(f"serve.model: {path} has no weights (*.safetensors)")
    return path


def check_classifier_dir(path: str) -> str:
    """A classifier directory, local or in an object store (which the scorer reads directly)."""
    path, files = _dir_files(path)
    if "model.joblib" not in (files or ()):
        raise FileNotFoundError(
            f"serve.classifier: {path} is not a classifier directory (no model.joblib); "
            "pass the classifier/ directory that the classify stage wrote"
        )
    return path


def build_app(scfg: ServeConfig, model_dir: str, classifier_dir: str | None = None) -> Application:
    """The Serve application for ``model_dir`` (and ``classifier_dir``, when given): on
    vLLM through Ray Serve LLM when :func:`~phi_ray.serving.llm_app.choose_engine` says so
    (``phi_ray.serving.llm_app``), else on transformers (the deployments below).

    The API key, when ``scfg.api_key_env`` is set in this process, is handed to the
    ingress replicas through their runtime environment (not through the app's arguments,
    which Serve shows in its status).
    """
    model_dir = check_model_dir(model_dir)
    classifier_dir = check_classifier_dir(classifier_dir) if classifier_dir else None
    if choose_engine(scfg) == "vllm":  # Ray Serve LLM on vLLM, the classifier beside it
        from phi_ray.serving.llm_app import build_vllm_app

        return build_vllm_app(scfg, model_dir, classifier_dir)
    b = scfg.max_batch_size
    model = CompletionModel.options(
        ray_actor_options={"num_cpus": scfg.num_cpus, "num_gpus": scfg.num_gpus},
        max_ongoing_requests=max(64, 4 * b),
        **replica_options(scfg, target=b),
    ).bind(model_dir, scfg.engine, b, scfg.batch_wait_timeout_s, scfg.batch_wait_max_s)
    scorer = bind_scorer(scfg, classifier_dir)
    settings = IngressSettings(
        model_name=scfg.model_name,
        model_dir=model_dir,
        max_tokens_limit=scfg.max_tokens_limit,
        max_n=scfg.max_n,
        batch=b,
        max_prompts=scfg.max_prompts,
        max_stops=scfg.max_stops,
        max_quality_codes=scfg.classifier_max_batch_size,
        max_body_bytes=scfg.max_body_bytes,
        api_key_env=scfg.api_key_env,
        classifier_dir=classifier_dir,
    )
    key = os.environ.get(scfg.api_key_env)
    opts: dict[str, Any] = {"max_ongoing_requests": scfg.max_ongoing_requests}
    if key:
        opts["ray_actor_options"] = {
            "num_cpus": 0,
            "runtime_env": {"env_vars": {scfg.api_key_env: key}},
        }
    return Ingress.options(**opts).bind(model, scorer, settings)
