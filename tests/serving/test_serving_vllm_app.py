"""The engine choice and the Ray Serve LLM (vLLM) application's config, on a CPU without vLLM.

Nothing here starts vLLM or a GPU replica: the application is built up to what Serve would
schedule (the LLMConfig Ray validates, the placement bundles Ray derives from it, the
classifier deployment, the ingress options), and the GPU end-to-end test
(``test_serving_vllm_gpu.py``) runs it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import yaml

from phi_ray.config import ConfigError, ServeConfig, load_config
from phi_ray.serving.app import build_app
from phi_ray.serving.llm_app import VLLM_VERSION, choose_engine, vllm_app_spec

REPO = Path(__file__).resolve().parents[2]
no_vllm_here = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None or torch.cuda.is_available(),
    reason="checks a host without CUDA and vLLM",
)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A tiny exported model directory (as pretrain writes it) and a classifier directory."""
    from phi_ray.model.phi import build_model
    from phi_ray.model.tokenizer import get_tokenizer, save_tokenizer

    root = tmp_path_factory.mktemp("vllm-app")
    build_model(load_config("tiny").model, seed=0).save_pretrained(root / "model")
    save_tokenizer(get_tokenizer(), str(root / "model"))
    (root / "clf").mkdir()
    (root / "clf" / "model.joblib").write_bytes(b"")  # the builder only checks it is there
    return str(root / "model"), str(root / "clf")


@no_vllm_here
def test_engine_choice_here():
    assert choose_engine(ServeConfig()) == "transformers"


def test_engine_choice():
    auto = ServeConfig()
    assert choose_engine(auto, has_vllm=True, has_cuda=True) == "vllm"
    assert choose_engine(auto, has_vllm=True, has_cuda=False) == "transformers"
    assert choose_engine(auto, has_vllm=False, has_cuda=True) == "transformers"
    hf = ServeConfig(engine="transformers")
    assert choose_engine(hf, has_vllm=True, has_cuda=True) == "transformers"
    assert choose_engine(ServeConfig(engine="vllm"), has_vllm=True, has_cuda=False) == "vllm"
    # asked for and not installed: an error naming the pinned extra, not a silent fallback
    with pytest.raises(RuntimeError, match=f"vllm=={VLLM_VERSION}"):
        choose_engine(ServeConfig(engine="vllm"), has_vllm=False)


@no_vllm_here
def test_build_app_picks_transformers_here_and_refuses_vllm_before_deploying(dirs):
    model, clf = dirs
    app = build_app(ServeConfig(), model, clf)
    assert app._bound_deployment.name == "Ingress"  # the transformers application
    model_dep, scorer = app._bound_deployment.init_args[:2]
    assert model_dep._bound_deployment.name == "CompletionModel"
    assert scorer._bound_deployment.name == "QualityScorer"
    assert "vllm" not in sys.modules
    with pytest.raises(RuntimeError, match="phi-ray\\[vllm\\]"):
        build_app(ServeConfig(engine="vllm"), model, clf)


def test_vllm_config_schedules_on_the_clusters_gpu_nodes(dirs):
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager
    from ray.llm._internal.serve.core.configs.accelerators import GPUAccelerator
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    model, clf = dirs
    cfg = load_config(
        "tiny",
        [
            "serve.engine=vllm",
            "serve.accelerator_type=A100",
            "serve.tensor_parallel_size=2",
            "serve.min_replicas=1",
            "serve.max_replicas=3",
            "serve.num_cpus=4",
            "serve.gpu_memory_utilization=0.5",
            "serve.classifier_num_gpus=0.25",
            "serve.classifier_num_cpus=2",
        ],
    ).serve
    spec = vllm_app_spec(cfg, model, clf)
    lc = spec.llm_config
    assert isinstance(lc, LLMConfig) and lc.llm_engine == "vLLM"
    assert lc.model_id == "phi-1" and lc.model_loading_config.model_source == model
    assert lc.engine_kwargs == {
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.5,
        "enforce_eager": False,
    }
    auto = lc.deployment_config["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 3)
    assert lc.deployment_config["ray_actor_options"] == {"num_cpus": 4.0}
    # Ray's own placement for a GPU LLMConfig: one bundle per tensor-parallel GPU, each with
    # the accelerator-type hint...
    assert lc.accelerator_config.kind == "gpu"
    bundles = GPUAccelerator().default_bundles(num_devices=2, accelerator_type_str="A100")
    assert bundles == [{"GPU": 1, "accelerator_type:A100": 0.001}] * 2
    # ... which is a resource the cluster's GPU node type has: Ray names the accelerator of
    # cluster.yaml's gpu_a100 instance (p4d.24xlarge: 8x NVIDIA A100-SXM4-40GB) "A100".
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    node = cluster["available_node_types"]["gpu_a100"]["node_config"]["InstanceType"]
    assert node == "p4d.24xlarge"
    gpu_name = {"p4d.24xlarge": "NVIDIA A100-SXM4-40GB"}[node]
    assert NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(gpu_name) == "A100"
    # the classifier: our deployment, in the same application, with its own resources
    dep = spec.scorer._bound_deployment
    assert dep.name == "QualityScorer" and dep.init_args == (clf, cfg.classifier_max_batch_size)
    assert dep.ray_actor_options == {"num_cpus": 2.0, "num_gpus": 0.25}
    assert spec.ingress_options["ray_actor_options"]["num_cpus"] == 0
    assert spec.ingress_kwargs["model_dir"] == model
    assert vllm_app_spec(cfg, model, None).scorer is None


def test_vllm_config_api_key_object_store_and_hostile_values(dirs, monkeypatch):
    from pydantic import ValidationError

    model, _ = dirs
    monkeypatch.setenv("PHI_RAY_API_KEY", "sk-secret")
    spec = vllm_app_spec(ServeConfig(engine="vllm"), model, None)
    # the key reaches the ingress through its environment, never through its arguments
    env = spec.ingress_options["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == {"PHI_RAY_API_KEY": "sk-secret"}
    assert "sk-secret" not in repr(spec.ingress_kwargs)
    assert "sk-secret" not in repr(spec.llm_config.model_dump())
    # one replica: a fixed count, not an autoscaling config
    assert spec.llm_config.deployment_config["num_replicas"] == 1
    # an object-store export is mirrored onto each GPU node by Ray
    s3 = vllm_app_spec(ServeConfig(), "s3://bucket/runs/x/finetune/model", None)
    assert s3.llm_config.model_loading_config.model_source.bucket_uri == (
        "s3://bucket/runs/x/finetune/model"
    )
    with pytest.raises(ValidationError, match="accelerator"):
        vllm_app_spec(ServeConfig(accelerator_type="A100; rm -rf /"), model, None)
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        ServeConfig(tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        ServeConfig(gpu_memory_utilization=1.5)


def test_vllm_serve_config_and_the_pinned_extra():
    """serve/config-vllm.yaml is a valid Serve config whose args build the vLLM spec, and
    pyproject's vllm extra pins the vLLM that ray 2.60's own llm extra requires."""
    from importlib.metadata import requires

    import tomllib
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((REPO / "serve/config-vllm.yaml").read_text())
    ServeDeploySchema.model_validate(doc)
    (app,) = doc["applications"]
    assert app["import_path"] == "serve.app:app_builder"
    args = dict(app["args"])
    preset = args.pop("preset")
    cfg = load_config(preset, [f"serve.{k}={v}" for k, v in args.items()]).serve
    assert cfg.engine == "vllm" and cfg.accelerator_type == "A100"
    spec = vllm_app_spec(cfg, cfg.model, cfg.classifier)
    assert spec.llm_config.accelerator_type == "A100" and spec.scorer is not None
    ray_llm = [r for r in requires("ray") or [] if 'extra == "llm"' in r and "vllm" in r]
    assert ray_llm and f"=={VLLM_VERSION}" in ray_llm[0], ray_llm
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert f"vllm=={VLLM_VERSION}" in extras["vllm"]
    assert not any(d.startswith("vllm") for d in extras["gpu"])  # the pin lives in one place
