"""The decontam stage end to end on real Ray: planted copies among unrelated exercises.

One stage run (tiny-codegen embeddings, k-NN candidates, AST match) is shared by the
tests of this module; each asserts on its artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from decontam_helpers import PLANT_TASKS, planted, write_exercises

from phi_ray.config import load_config
from phi_ray.runs import RunDir

TAUS = [0.8, 0.85, 0.9, 0.95]


@pytest.fixture(scope="module")
def decontam_run(ray_session, tmp_path_factory):
    from phi_ray.decontam.stage import run as decontam

    root = tmp_path_factory.mktemp("decontam")
    cfg = load_config(
        "tiny",
        [
            f"run.root={root}",
            "run.name=t",
            "decontam.l2_quantile=0.2",  # a loose embedding gate: the AST decides
            "quality.embedder.max_length=128",
        ],
    )
    run = RunDir.from_config(cfg)
    rows = planted(n_unrelated=30)
    write_exercises(run, [r for kind in rows.values() for r in kind])
    res = decontam(cfg, run)
    return cfg, run, res, rows


def _ids(path: Path) -> set[str]:
    return set(pads.dataset(str(path), format="parquet").to_table(columns=["id"])["id"].to_pylist())


def _report(res) -> dict:
    return json.loads((Path(res.path) / "report.json").read_text())


def test_copies_are_removed_by_the_right_method_with_their_task_id(decontam_run):
    _, _, res, rows = decontam_run
    removed = {r["id"]: r for r in _report(res)["removed"]}
    for r in rows["exact"]:
        rep = removed[r["id"]]
        assert rep["reason"] == "exact" and rep["removed_at"] == TAUS
        assert any(m["method"] == "exact" and m["task_id"] in PLANT_TASKS for m in rep["matches"])
    for r, task in zip(rows["renamed"], PLANT_TASKS, strict=True):
        rep = removed[r["id"]]
        assert rep["reason"] == "embed_ast" and rep["removed_at"] == TAUS
        (m,) = [m for m in rep["matches"] if m["task_id"] == task]
        assert m["method"] == "embed_ast" and m["match_rate"] == 1.0 and m["taus"] == TAUS
        assert m["l2"] < 1e-2  # normalised code embeds identically
    for r in rows["partial"]:  # extra statements: caught at low tau, kept at 0.95
        assert 0.8 in removed[r["id"]]["removed_at"]
        assert 0.95 not in removed[r["id"]]["removed_at"]
    for r in rows["unrelated"]:
        assert r["id"] not in removed, r["func_name"]
    for rep in removed.values():
        assert rep["matches"] and all(m["task_id"].startswith("HumanEval/") for m in rep["matches"])


def test_pruned_sets_per_tau_are_monotone_and_keep_every_column(decontam_run):
    cfg, run, res, rows = decontam_run
    every = {r["id"] for kind in rows.values() for r in kind}
    report = _report(res)
    removed_at = {r["id"]: set(r["removed_at"]) for r in report["removed"]}
    kept_counts = []
    for tau in TAUS:
        path = Path(res.path) / "pruned" / f"tau={tau:g}"
        kept = _ids(path)
        assert kept == {i for i in every if tau not in removed_at.get(i, ())}
        kept_counts.append(len(kept))
        summary = report["datasets"]["exercises"]["taus"][f"tau={tau:g}"]
        assert (
            summary["kept"] == len(kept)
            and res.counts[f"removed_tau={tau:g}"] == summary["removed"]
        )
    assert kept_counts == sorted(kept_counts) and kept_counts[0] < kept_counts[-1]
    source = pads.dataset(run.path("synth", "exercises"), format="parquet").schema
    out = pads.dataset(str(Path(res.path) / "exercises"), format="parquet")
    assert out.schema.names == source.names  # every column of the input survives
    assert _ids(Path(res.path) / "exercises") == _ids(Path(res.path) / "pruned" / "tau=0.9")
    assert cfg.decontam.use_tau == 0.9


def test_report_counts_humaneval_split_and_skip_on_rerun(decontam_run):
    cfg, _, res, rows = decontam_run
    split = json.loads((Path(res.path) / "humaneval_split.json").read_text())
    assert set(PLANT_TASKS) <= set(split["similar"])
    assert len(split["similar"]) + len(split["non_similar"]) == 164
    assert not set(split["similar"]) & set(split["non_similar"])
    c = res.counts
    assert c["rows_in"] == sum(len(v) for v in rows.values())
    assert c["dropped_exact"] == len(rows["exact"]) and c["benchmarks_loaded"] == 1
    report = _report(res)
    summary = report["datasets"]["exercises"]
    assert summary["ast_pairs"] > 0 and set(summary["method_seconds"]) == {"ngram", "embed", "ast"}
    assert report["benchmarks"]["humaneval"]["problems"] == 164

    from phi_ray.decontam.stage import run as decontam

    again = decontam(cfg, RunDir.from_config(cfg))
    assert again.skipped and again.counts == c
