"""Serving on the devices its deployments hold, and serve configs that schedule.

The classifier replica loads on CUDA when Ray gave it a GPU share, on CPU otherwise; every
serve config we ship (the presets' ``serve:``, serve/config.yaml, the RayService) fits one
node of the node types cluster.yaml and the KubeRay manifests declare.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from phi_ray.config import ServeConfig, load_config
from phi_ray.serving.deployments import replica_device
from phi_ray.serving.placement import Replicas, fits_one_node, serve_replicas

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
# (vCPUs, GPUs) of the instance types cluster.yaml names
INSTANCES = {"m5.4xlarge": (16, 0), "m5.8xlarge": (32, 0), "p4d.24xlarge": (96, 8)}


def _cluster_yaml_nodes() -> dict[str, tuple[float, int]]:
    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    out = {}
    for name, t in raw["available_node_types"].items():
        cpus, gpus = INSTANCES[t["node_config"]["InstanceType"]]  # an unknown type: KeyError
        res = t.get("resources") or {}
        out[name] = (float(res.get("CPU", cpus)), int(res.get("GPU", gpus)))
    return out


def _k8s_groups(cluster_spec: dict) -> dict[str, tuple[float, int]]:
    """A RayCluster spec's groups as Ray sees them: the container's requests, unless
    rayStartParams overrides them (the head's num-cpus: "0")."""
    groups = [("head", cluster_spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in cluster_spec.get("workerGroupSpecs", [])]
    out = {}
    for name, g in groups:
        req = g["template"]["spec"]["containers"][0]["resources"]["requests"]
        params = g.get("rayStartParams") or {}
        cpus = float(params.get("num-cpus", req.get("cpu", 0)))
        gpus = int(params.get("num-gpus", req.get("nvidia.com/gpu", 0)))
        out[name] = (cpus, gpus)
    return out


def _k8s(name: str) -> dict:
    return yaml.safe_load((REPO / "k8s" / name).read_text())


def _engines(scfg: ServeConfig) -> list[str]:
    # on a GPU node `auto` is vLLM when installed, else transformers: both must schedule
    return ["transformers", "vllm"] if scfg.num_gpus > 0 else ["transformers"]


def test_classifier_device_follows_the_gpu_share_ray_assigned():
    assert replica_device() == "cpu"  # here: no Ray worker context, no GPU
    assert replica_device(gpu_ids=[], cuda=True) == "cpu"  # a GPU node, no share for us
    assert replica_device(gpu_ids=[0], cuda=True) == "cuda"  # a 0.25 share still is GPU 0
    assert replica_device(gpu_ids=["0"], cuda=False) == "cpu"  # assigned, not visible: warn


def test_packing_is_per_gpu_and_can_refuse():
    model = Replicas("model", 1, 4, (1.0,))
    clf = Replicas("classifier", 1, 2, (0.25,))
    # the configuration the issue found: a whole GPU for the model and a share for the
    # classifier never schedule on one 1-GPU node
    assert not fits_one_node([model, clf], cpus=8, gpus=1)
    assert fits_one_node([model, clf], cpus=8, gpus=2)
    assert fits_one_node([Replicas("m", 1, 4, (0.75,)), clf], cpus=8, gpus=1)
    # shares never straddle GPUs: 0.6 + 0.6 needs two GPUs though 1.2 < 2 is all that adds up
    assert not fits_one_node([Replicas("a", 2, 1, (0.6,))], cpus=8, gpus=1)
    assert fits_one_node([Replicas("a", 2, 1, (0.6,))], cpus=8, gpus=2)
    assert not fits_one_node([model, clf], cpus=5, gpus=8)  # CPUs add up too


def test_serve_replicas_match_what_the_apps_ask_ray_for():
    from phi_ray.serving.llm_app import vllm_app_spec

    scfg = load_config("phi1").serve
    spec = vllm_app_spec(scfg, "/models/phi1", "/models/clf")
    [model, clf] = serve_replicas(scfg, "vllm")
    assert spec.llm_config.placement_group_config == {"bundles": [{"GPU": model.gpus[0]}]}
    opts = spec.scorer._bound_deployment.ray_actor_options
    assert (opts["num_cpus"], opts["num_gpus"]) == (clf.cpus, clf.gpus[0])
    assert spec.llm_config.deployment_config["ray_actor_options"]["num_cpus"] == model.cpus
    # whole GPUs for tensor parallelism: Ray's default bundles, no share
    tp = ServeConfig(engine="vllm", num_gpus=1, tensor_parallel_size=2)
    assert serve_replicas(tp, "vllm", classifier=False)[0].gpus == (1.0, 1.0)
    assert vllm_app_spec(tp, "/m", None).llm_config.placement_group_config is None


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_serve_configs_schedule_on_the_shipped_node_types(preset):
    scfg = load_config(preset).serve
    nodes = {
        **{f"cluster.yaml:{k}": v for k, v in _cluster_yaml_nodes().items()},
        **{f"raycluster:{k}": v for k, v in _k8s_groups(_k8s("raycluster.yaml")["spec"]).items()},
    }
    for engine in _engines(scfg):
        reps = serve_replicas(scfg, engine)
        fits = [n for n, (c, g) in nodes.items() if fits_one_node(reps, c, g)]
        assert any(n.startswith("cluster.yaml:") for n in fits), (preset, engine, reps)
        assert any(n.startswith("raycluster:") for n in fits), (preset, engine, reps)


def test_rayservice_and_serve_config_schedule():
    svc = _k8s("rayservice.yaml")["spec"]
    apps = yaml.safe_load(svc["serveConfigV2"])["applications"]
    groups = _k8s_groups(svc["rayClusterConfig"])
    for app in apps:
        scfg = load_config(app["args"]["preset"]).serve
        for engine in _engines(scfg):
            reps = serve_replicas(scfg, engine, classifier="classifier" in app["args"])
            fits = [g for g, (c, n) in groups.items() if fits_one_node(reps, c, n)]
            assert fits, (engine, reps, groups)  # one GPU pod holds the model and classifier
    # serve/config.yaml's own deployment resources (it targets cluster.yaml's GPU nodes)
    conf = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    reps = []
    for d in conf["applications"][0]["deployments"]:
        o = d.get("ray_actor_options", {})
        n = d.get("autoscaling_config", {}).get("min_replicas", d.get("num_replicas", 1))
        g = o.get("num_gpus", 0)
        reps.append(Replicas(d["name"], n, o.get("num_cpus", 1), (g,) if g else ()))
    gpu_nodes = [v for v in _cluster_yaml_nodes().values() if v[1] > 0]
    assert any(fits_one_node(reps, c, g) for c, g in gpu_nodes), reps
