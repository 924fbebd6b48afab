"""All eleven real stages in one `run_pipeline`, wired to each other, at a very small scale.

`make demo` runs the same thing at the tiny preset's scale (8 minutes); this keeps the
wiring between stages (each reading the one before's outputs) under test in minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_fixtures import TINY

from phi_ray.config import load_config
from phi_ray.pipeline import run_pipeline
from phi_ray.runs import RunDir
from phi_ray.stages import ORDER

SMALL = [
    *TINY,
    "corpus.sources=[{kind: stdlib, max_files: 150}]",
    "annotate.sample_size=80",
    "synth.n_exercises=40",
    "synth.n_textbooks=4",
    "pretrain.max_steps=4",
    "pretrain.warmup_steps=1",
    "pretrain.checkpoint_every=2",
    "pretrain.eval_every=2",
    "pretrain.eval_batches=1",
    "finetune.max_steps=2",
    "finetune.warmup_steps=1",
    "finetune.checkpoint_every=1",
    "finetune.eval_every=1",
    "finetune.eval_batches=1",
    "evaluate.limit=3",
    "evaluate.max_new_tokens=16",
]


@pytest.mark.slow
def test_every_stage_runs_then_the_rerun_skips_them_all(ray_session, tmp_path):
    cfg = load_config("tiny", [f"run.root={tmp_path / 'runs'}", "run.name=all", *SMALL])
    said: list[str] = []
    first = run_pipeline(cfg, echo=said.append)
    assert first.ran == ORDER and not (first.missing or first.blocked), said

    run = RunDir.from_config(cfg)
    counts = {s: run.read_success(s)["counts"] for s in ORDER}
    # each stage consumed what the one before it produced
    assert counts["ingest"]["files_out"] == counts["score"]["rows_in"] > 0
    assert 0 < counts["score"]["rows_out"] < counts["score"]["rows_in"]
    assert counts["decontam"]["rows_in"] == counts["synth"]["exercises_kept"] > 0
    assert counts["pack"]["pretrain_train_windows"] > 0 < counts["pack"]["finetune_train_windows"]
    assert counts["pretrain"]["steps"] == 4 and counts["finetune"]["steps"] == 2
    assert (
        json.loads(Path(run.path("evaluate", "humaneval", "summary.json")).read_text())["problems"]
        == 3
    )
    assert counts["report"]["sections_filled"] == 10  # every section from this run's artifacts

    said.clear()
    again = run_pipeline(cfg, echo=said.append)
    assert again.skipped == ORDER and not again.ran, said
