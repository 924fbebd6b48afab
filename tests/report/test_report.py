"""The HTML report from a run directory's artifacts (written here as the stages write them)."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from phi_ray.report.stage import render
from phi_ray.report.stage import run as report_run


def _stage(run, name, counts, files=None, **extra):
    with run.stage(name, "h") as out:
        for rel, content in (files or {}).items():
            p = os.path.join(out.tmp, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if isinstance(content, pa.Table):
                pq.write_table(content, p)
            else:
                with open(p, "w") as f:
                    f.write(content if isinstance(content, str) else json.dumps(content))
        out.finish(counts=counts, **extra)


def test_report_sections_fill_from_artifacts(tiny_cfg, run_dir):
    page, filled = render(tiny_cfg, run_dir)
    assert filled == 0 and page.count("has not run") == 10

    _stage(
        run_dir,
        "ingest",
        {
            "files_in": 600,
            "files_out": 500,
            "tokens_in": 9e5,
            "tokens_out": 8e5,
            "drops": {"too_short": 60, "syntax_error": 40, "binary": 0},
            "removed_near": 7,
        },
    )
    _stage(
        run_dir,
        "annotate",
        {"labelled": 4},
        files={"labels/part-0.parquet": pa.table({"id": list("abcd"), "score": [0, 2, 3, 5]})},
        judge="heuristic",
    )
    _stage(
        run_dir,
        "classify",
        {},
        files={
            "classifier/metrics.json": {
                "f1": 0.8,
                "roc_auc": 0.9,
                "confusion_matrix": [[5, 1], [2, 7]],
                "precision": 0.875,
                "recall": 0.78,
                "threshold": 0.5,
                "pr_curve": {
                    "precision": [0.6, 0.8, 0.875, 1.0],
                    "recall": [1.0, 0.9, 0.78, 0.3],
                    "thresholds": [0.1, 0.3, 0.5, 0.9],
                },
            },
            "classifier/meta.json": {"threshold": 0.5, "embedder": "tiny-codegen"},
        },
    )
    _stage(
        run_dir,
        "score",
        {"files_out": 250},
        files={
            "scored/part-0.parquet": pa.table(
                {
                    "id": list("abcd"),
                    "quality": [0.1, 0.4, 0.6, 0.9],
                    "kept": [False, False, True, True],
                }
            )
        },
    )
    _stage(
        run_dir,
        "pretrain",
        {},
        files={
            "metrics.jsonl": "\n".join(
                json.dumps({"step": i, "loss": 10 - i, "lr": 1e-3, "tokens_per_s": 100.0})
                for i in range(1, 6)
            )
        },
    )
    _stage(
        run_dir,
        "decontam",
        {"rows_in": 10, "kept": 8, "removed_tau=0.8": 3, "removed_tau=0.9": 2},
        files={"report.json": {"taus": [0.8, 0.9], "use_tau": 0.9}},
    )
    _stage(
        run_dir,
        "evaluate",
        {},
        files={
            "humaneval/summary.json": {
                "pass@1": 0.25,
                "pass@10": 0.5,
                "problems": 20,
                "outcomes": {"AssertionError": 9, "SyntaxError": 6},
            }
        },
    )

    page, filled = render(tiny_cfg, run_dir)
    assert filled == 8  # all but synth and finetune
    # the funnel row of ingest: in, out, tokens, and its drop reasons largest first
    assert "<td>ingest</td><td>files</td><td>600</td><td>500</td>" in page
    assert "too_short 60, syntax_error 40, removed_near 7" in page and "binary 0" not in page
    # plots: funnel x2, scores, confusion matrix, PR curve, pretrain x3, tau bars
    assert page.count("data:image/png;base64,") >= 9
    assert "Cost: $0, no LLM calls" in page  # the heuristic judge's cost, said outright
    assert "<td>0.9 (used)</td><td>2</td>" in page  # the tau sweep, the tau in use marked
    assert "this run pass@10 %" in page and "<td>25</td><td>50</td><td>50.6</td>" in page
    assert "<td>AssertionError</td><td>9</td>" in page  # how failing samples ended
    assert "Estimate for the tiny preset" in page and "<td>pretrain</td>" in page
    assert "500 of" not in page and "2 of 4 files at or above the threshold 0.500" in page

    res = report_run(tiny_cfg, run_dir)
    assert os.path.exists(run_dir.path("report.html")) and res.counts["sections_filled"] == 8
    assert report_run(tiny_cfg, run_dir).skipped
