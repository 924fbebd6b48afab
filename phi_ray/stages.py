"""The pipeline's stages, in order, and where each one's ``run(cfg, run)`` lives.

Every stage module exposes ``run(cfg: Config, run: RunDir) -> StageResult`` (the function
named after the colon). ``phi-ray <stage>`` and ``phi-ray run`` both go through here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from phi_ray.config import Config
from phi_ray.runs import RunDir, StageResult


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function"
    help: str
    needs: tuple[str, ...] = ()

    def load(self) -> Callable[[Config, RunDir], StageResult] | None:
        """The stage's entry point, or None while this version of phi-ray lacks it."""
        module, func = self.target.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and (module == e.name or module.startswith(e.name + ".")):
                return None
            raise
        return getattr(mod, func, None)


PIPELINE: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "phi_ray.corpus.stage:run",
        "read The Stack / StackOverflow / local .py trees into corpus/ (dedup, prefilters)",
    ),
    Stage(
        "annotate",
        "phi_ray.annotate.stage:run",
        "rate a sample of the corpus for educational value with an LLM (or heuristic) judge",
        ("ingest",),
    ),
    Stage(
        "classify",
        "phi_ray.quality.train:run",
        "train the random-forest quality classifier on CodeGen embeddings of the labels",
        ("ingest", "annotate"),
    ),
    Stage(
        "score",
        "phi_ray.quality.score:run",
        "score the whole corpus with the classifier and keep the best (scored/, filtered/)",
        ("ingest", "classify"),
    ),
    Stage(
        "synth",
        "phi_ray.synth.stage:run",
        "generate synthetic textbooks and exercises (LLM), or mine exercises offline",
        ("score",),
    ),
    Stage(
        "decontam",
        "phi_ray.decontam.stage:run",
        "remove exercises similar to HumanEval / MBPP (n-gram, embedding, AST; tau sweep)",
        ("synth",),
    ),
    Stage(
        "pack",
        "phi_ray.packing.stage:run",
        "tokenize and pack pretrain / finetune data into fixed windows of token ids",
        ("score", "synth"),
    ),
    Stage(
        "pretrain",
        "phi_ray.train.stage:pretrain",
        "pretrain phi-1-base with Ray Train (DDP/FSDP, mixed precision, resumable)",
        ("pack",),
    ),
    Stage(
        "finetune",
        "phi_ray.train.stage:finetune",
        "finetune on the exercises and keep the best checkpoint",
        ("pack", "pretrain"),
    ),
    Stage(
        "evaluate",
        "phi_ray.evaluate.stage:run",
        "HumanEval / MBPP pass@k with sandboxed execution",
        ("finetune",),
    ),
    Stage(
        "report",
        "phi_ray.report.stage:run",
        "write runs/<run>/report.html: funnel, costs, metrics, curves, pass@k",
    ),
)

COMMANDS: tuple[Stage, ...] = (
    Stage(
        "serve",
        "phi_ray.serving.stage:run",
        "serve the model (OpenAI-compatible /v1/completions) and the classifier (/v1/quality)",
    ),
    Stage(
        "estimate",
        "phi_ray.report.estimate:run",
        "estimate LLM tokens, GPU-hours and dollars for a preset before running it",
    ),
)

BY_NAME = {s.name: s for s in PIPELINE + COMMANDS}
ORDER = [s.name for s in PIPELINE]
