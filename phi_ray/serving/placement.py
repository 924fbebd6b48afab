"""What a serve config asks Ray for, and whether that fits one node of a given shape.

The model and the classifier replicas reserve CPUs and GPUs (or GPU shares); the ingress
reserves none. A serve config "schedules" on a node type when its minimum replicas fit one
node of it: the CPUs add up, and each replica's GPU pieces go onto single GPUs (Ray never
splits a fractional request across GPUs, and a whole-GPU request takes whole GPUs). The
tests check every shipped serve config against the node types cluster.yaml and the KubeRay
manifests declare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phi_ray.config import ServeConfig


@dataclass(frozen=True)
class Replicas:
    name: str
    count: int  # the minimum number of replicas (what must schedule before serving starts)
    cpus: float  # per replica
    gpus: tuple[float, ...] = ()  # per replica: one entry per GPU (or share of one) it holds


def serve_replicas(scfg: ServeConfig, engine: str, classifier: bool = True) -> list[Replicas]:
    """The replicas of the application :mod:`phi_ray.serving.app` (``transformers``) or
    :mod:`phi_ray.serving.llm_app` (``vllm``) builds from ``scfg``."""
    if engine == "vllm":
        # Ray Serve LLM: one bundle per tensor-parallel GPU, or a share of one GPU
        share = 0 < scfg.num_gpus < 1 and scfg.tensor_parallel_size == 1
        gpus = (scfg.num_gpus,) if share else (1.0,) * scfg.tensor_parallel_size
    else:
        n = scfg.num_gpus
        gpus = (n,) if 0 < n <= 1 else (1.0,) * int(n)
    out = [Replicas("model", scfg.min_replicas, scfg.num_cpus, gpus)]
    if classifier:
        cg = scfg.classifier_num_gpus
        out.append(Replicas("classifier", 1, scfg.classifier_num_cpus, (cg,) if cg else ()))
    return out


def fits_one_node(replicas: list[Replicas], cpus: float, gpus: int) -> bool:
    """Whether all ``count`` replicas of each fit one node of ``cpus`` CPUs and ``gpus`` GPUs
    (GPU pieces packed first-fit decreasing onto GPUs of capacity 1)."""
    eps = 1e-9
    if sum(r.cpus * r.count for r in replicas) > cpus + eps:
        return False
    free = [1.0] * gpus
    pieces = sorted((g for r in replicas for _ in range(r.count) for g in r.gpus), reverse=True)
    for g in pieces:
        slot = next((i for i, f in enumerate(free) if f + eps >= g), None)
        if slot is None:
            return False
        free[slot] -= g
    return True


def replica_options(scfg: ServeConfig, target: int, **autoscaling: Any) -> dict[str, Any]:
    """A deployment's replica options: fixed ``num_replicas`` when min == max, else Serve's
    autoscaling between them at ``target`` ongoing requests per replica (plus any other
    autoscaling keys an engine needs)."""
    if scfg.min_replicas == scfg.max_replicas:
        return {"num_replicas": scfg.min_replicas}
    return {
        "autoscaling_config": {
            "min_replicas": scfg.min_replicas,
            "max_replicas": scfg.max_replicas,
            "target_ongoing_requests": target,
            **autoscaling,
        }
    }
