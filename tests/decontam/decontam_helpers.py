"""Planted exercise sets for the decontamination tests and benchmark.

Exercises follow the synth contract (prompt = signature + docstring, completion = body).
Planted rows are exact copies of HumanEval problems, copies with every local name and the
docstring changed (n-grams no longer match; the AST does), partial copies with extra
statements (AST match rate between the τs), and unrelated functions from the standard
library.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import random
import sysconfig
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from phi_ray.decontam.benchmarks import Problem, load_humaneval

# Single-function HumanEval problems of moderate size: distinctive enough to plant.
PLANT_TASKS = ["HumanEval/0", "HumanEval/12", "HumanEval/20", "HumanEval/26", "HumanEval/46"]


def exercise(prompt: str, completion: str, func_name: str, topic: str = "planted") -> dict:
    """One row in the synth exercises schema."""
    return {
        "id": hashlib.sha256((prompt + completion).encode()).hexdigest(),
        "kind": "exercise",
        "prompt": prompt,
        "completion": completion,
        "func_name": func_name,
        "topic": topic,
        "audience": "test",
        "model": "mined",
        "source": "mined",
        "prompt_hash": "",
        "tokens": 0,
        "cost_usd": 0.0,
    }


def _split(func: ast.FunctionDef, doc: str) -> tuple[str, str]:
    body = [
        s for s in func.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    head = ast.FunctionDef(
        name=func.name,
        args=func.args,
        body=[ast.Pass()],
        decorator_list=[],
        returns=func.returns,
        type_params=[],
        lineno=1,
    )
    sig = ast.unparse(head).rsplit("\n", 1)[0]
    prompt = f'{sig}\n    """{doc}"""\n'
    completion = textwrap.indent(ast.unparse(ast.Module(body=body, type_ignores=[])), "    ") + "\n"
    return prompt, completion


def renamed(p: Problem, extra: int = 0, seed: int = 0) -> dict:
    """The problem's reference with every local name and its docstring changed.

    ``extra`` appends that many unrelated statements, lowering the AST match rate.
    """
    tree = ast.parse(p.code)
    func = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == p.entry_point
    )
    local = {func.name} | {a.arg for a in func.args.args}
    local |= {
        n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    local -= set(dir(builtins))
    rng = random.Random(seed)
    names = {
        n: f"{rng.choice(['val', 'item', 'tmp', 'acc'])}_{i}" for i, n in enumerate(sorted(local))
    }
    for n in ast.walk(func):
        if isinstance(n, ast.Name) and n.id in names:
            n.id = names[n.id]
        elif isinstance(n, ast.arg) and n.arg in names:
            n.arg = names[n.arg]
    func.name = names[func.name]
    for i in range(extra):
        func.body.insert(1, ast.parse(f"step_{i} = {i}").body[0])
    prompt, completion = _split(func, "Compute the requested value for the given inputs.")
    return exercise(prompt, completion, func.name, topic="renamed")


def exact(p: Problem) -> dict:
    return exercise(p.prompt, p.solution, p.entry_point or "", topic="exact")


def stdlib_functions(n: int, min_statements: int = 6) -> list[dict]:
    """Documented functions of a few statements from the standard library (unrelated code)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[dict] = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or not ast.get_docstring(node):
                continue
            if len(list(ast.walk(node))) < 12 * min_statements:
                continue
            try:
                prompt, completion = _split(node, ast.get_docstring(node).splitlines()[0])
            except (ValueError, TypeError):
                continue
            out.append(exercise(prompt, completion, node.name, topic="stdlib"))
            if len(out) >= n:
                return out
    return out


def planted(n_unrelated: int = 30) -> dict[str, list[dict]]:
    """Rows by kind: exact copies, renamed copies, partial copies, unrelated functions."""
    probs = {p.task_id: p for p in load_humaneval()}
    tasks = [probs[t] for t in PLANT_TASKS]
    return {
        "exact": [exact(p) for p in tasks[:3]],
        "renamed": [renamed(p, seed=i) for i, p in enumerate(tasks)],
        "partial": [renamed(p, extra=1 + i % 3, seed=i) for i, p in enumerate(tasks)],
        "unrelated": stdlib_functions(n_unrelated),
    }


def write_exercises(run, rows: list[dict], stage: str = "synth", sub: str = "exercises") -> None:
    """Write ``rows`` as the upstream stage's Parquet output and mark that stage complete."""
    with run.stage(stage, f"fixture-{len(rows)}") as out:
        dest = Path(out.tmp) / sub
        dest.mkdir(parents=True)
        half = max(1, len(rows) // 2)
        for i, chunk in enumerate((rows[:half], rows[half:])):
            if chunk:
                pq.write_table(pa.Table.from_pylist(chunk), dest / f"part-{i:05d}.parquet")
        out.finish(counts={"rows": len(rows)})
