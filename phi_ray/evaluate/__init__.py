"""Evaluation: HumanEval / MBPP generation, sandboxed parallel execution, unbiased pass@k.

- :mod:`~phi_ray.evaluate.problems`: benchmarks in one (HumanEval) format.
- :mod:`~phi_ray.evaluate.generate`: completions from a checkpoint (Ray actors) or an
  OpenAI-compatible endpoint, cut at the BigCode stop sequences.
- :mod:`~phi_ray.evaluate.sandbox`: each program in its own isolated, limited process.
- :mod:`~phi_ray.evaluate.passk`: the unbiased pass@k estimator.
- :mod:`~phi_ray.evaluate.stage`: ``run(cfg, run)``, the ``phi-ray evaluate`` stage.
"""

from phi_ray.evaluate.passk import pass_at_k
from phi_ray.evaluate.problems import Problem, load_benchmark
from phi_ray.evaluate.sandbox import ExecResult, Limits, Sandbox, probe_isolation

__all__ = [
    "ExecResult",
    "Limits",
    "Problem",
    "Sandbox",
    "load_benchmark",
    "pass_at_k",
    "probe_isolation",
]
