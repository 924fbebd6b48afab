"""Synthetic data (phi-1's CodeTextbook and CodeExercises) and exercises mined offline.

- :mod:`topics`: weighted topic trees (``configs/topics/``) and per-sample constraints.
- :mod:`prompts`: the textbook / exercise prompts and their provenance hash.
- :mod:`generate`: generation through :mod:`phi_ray.llm` (cache, retries, budget, cost).
- :mod:`parse`, :mod:`validate`, :mod:`sandbox`: boilerplate, code blocks, prompt /
  completion splits, and doctest examples run in a sandboxed subprocess.
- :mod:`mine`: exercises cut from real functions with docstrings in ``score/filtered/``.
- :mod:`dedup`, :mod:`diversity`: MinHash near-duplicate removal and the diversity report.
- :mod:`stage`: ``run(cfg, run)``, the pipeline stage.
"""
