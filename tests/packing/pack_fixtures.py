"""Upstream outputs for the pack stage, written as real Parquet (stdlib files, exercises)."""

from __future__ import annotations

import ast
import hashlib
import os

import pandas as pd
from conftest import stdlib_python_files


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write(run, stage: str, parts: dict[str, pd.DataFrame]) -> None:
    with run.stage(stage, f"fixture-{stage}") as out:
        for sub, df in parts.items():
            os.makedirs(os.path.join(out.tmp, sub), exist_ok=True)
            # Two files per output, as a multi-block upstream would write.
            half = len(df) // 2
            df.iloc[:half].to_parquet(os.path.join(out.tmp, sub, "part-0.parquet"))
            df.iloc[half:].to_parquet(os.path.join(out.tmp, sub, "part-1.parquet"))
        out.finish(counts={k: len(v) for k, v in parts.items()})


def _exercises(files, limit: int) -> pd.DataFrame:
    """Mined exercises: a function's signature + docstring as prompt, its body as completion."""
    rows = []
    for path in files:
        src = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        lines = src.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or not ast.get_docstring(node):
                continue
            doc_end = node.body[0].end_lineno
            if len(node.body) < 2 or node.col_offset != 0:
                continue
            prompt = "".join(lines[node.lineno - 1 : doc_end])
            completion = "".join(lines[doc_end : node.end_lineno])
            rows.append(
                {
                    "id": _sha(prompt + completion),
                    "kind": "exercise",
                    "prompt": prompt,
                    "completion": completion,
                    "func_name": node.name,
                    "source": "mined",
                }
            )
            if len(rows) >= limit:
                return pd.DataFrame(rows)
    return pd.DataFrame(rows)


def write_upstream(
    run, n_files: int = 60, n_books: int = 8, n_exercises: int = 120, with_decontam: bool = False
) -> None:
    """score/filtered, synth/textbooks, synth/exercises (and decontam/exercises) fixtures."""
    files = stdlib_python_files(n_files)
    contents = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    filtered = pd.DataFrame(
        {
            "id": [_sha(c) for c in contents],
            "content": contents,
            "path": [str(p) for p in files],
            "quality": 0.9,
        }
    )
    books = [
        f"# Lesson {i}: loops\n\nA loop repeats code. " * 20
        + f"\n```python\nfor i in range({i}):\n    print(i)\n```\n"
        for i in range(n_books)
    ]
    textbooks = pd.DataFrame({"id": [_sha(b) for b in books], "kind": "textbook", "content": books})
    ex = _exercises(stdlib_python_files(), n_exercises)
    _write(run, "score", {"filtered": filtered, "scored": filtered[["id", "quality"]]})
    _write(run, "synth", {"textbooks": textbooks, "exercises": ex})
    if with_decontam:
        _write(run, "decontam", {"exercises": ex.iloc[: len(ex) // 2]})
