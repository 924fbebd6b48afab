"""The heuristic judge: a deterministic 0–5 "educational value" score from a file's own features.

It is the offline default (no ``llm.base_url``): not an LLM, and not a substitute for one,
but it rewards what the paper's GPT-4 prompt asks for and punishes what it filters out.

Rubric ``heuristic-v1`` (points add up, then the total is clamped to [0, 5] and rounded):

======================  ======  ==============================================================
criterion               points  how
======================  ======  ==============================================================
documentation           0–1.75  0.35 for a module docstring + 1.4 × share of functions /
                                classes with a docstring
descriptive names       0–0.75  0.75 × share of function / argument names that are words
                                (>= 3 letters, not ``x1``-style), ``self``/``cls`` ignored
comments                0–0.5   comment lines per code line: full marks from 0.08 to 0.5,
                                linear below, fading above (commented-out walls of text)
logic                   0–1.25  0.5 for defining functions or classes + 0.75 × density of
                                control flow (if / for / while / try / comprehensions)
self-contained          0–0.5   0.5, minus 0.25 for relative imports (``from . import``,
                                local package internals), minus 0.05 per non-stdlib module
                                (at most 0.15)
boilerplate             -2–0    minus 2 × share of statements that are plain assignments in
                                runs of >= 6 (attribute / constant / config blocks), minus up to
                                1 for big literal data (lists / dicts of constants)
size                    -1–0    -1 under 4 code lines; -0.5 over 1,500 (too long to study)
======================  ======  ==============================================================

The maximum is 4.75: a 5 needs (nearly) full marks everywhere. On the standard library
(good code, mostly) about two thirds of files score >= 3. Files that do not parse score 0.
Everything is computed from the text alone.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass

VERSION = "heuristic-v1"
_STDLIB = frozenset(sys.stdlib_module_names)
# Possessive (*+, {3,}+): the plain pattern backtracks exponentially on a long name that
# ends in a letter outside [a-zA-Z] ("aaa...aé" is valid Python); these match the same names.
_WORDISH = re.compile(r"^_*+[a-zA-Z]{3,}+(?:_?[a-zA-Z0-9]+)*+_*$")
_CONTROL = (ast.If, ast.For, ast.While, ast.Try, ast.With, ast.ListComp, ast.DictComp,
            ast.SetComp, ast.GeneratorExp, ast.Return, ast.AsyncFor)  # fmt: skip
_ASSIGN = (ast.Assign, ast.AnnAssign, ast.AugAssign)


@dataclass(frozen=True)
class Judgement:
    score: int
    rationale: str
    points: float


def _comment_ratio(code: str) -> tuple[float, int]:
    """(``#`` comment lines per code line, code lines); line-based, so fast on big files."""
    comments = code_lines = 0
    for line in code.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments += 1
        else:
            code_lines += 1
            comments += "  # " in stripped  # trailing comment, as PEP 8 writes them
    return (comments / code_lines if code_lines else 0.0), code_lines


def _assignment_runs(nodes: list[ast.AST]) -> tuple[int, int]:
    """(statements in runs of >= 6 consecutive plain assignments, all statements)."""
    in_runs = total = 0
    for node in nodes:
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        run = 0
        for stmt in [*body, None]:
            if stmt is not None:
                total += 1
            if isinstance(stmt, _ASSIGN) or (
                isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and run
            ):
                run += 1
                continue
            if run >= 6:
                in_runs += run
            run = 0
    return in_runs, max(total, 1)


def _literal_share(nodes: list[ast.AST]) -> float:
    """Share of AST nodes inside big all-constant list / tuple / dict / set literals."""
    inside = 0
    for node in nodes:
        if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
            elts = node.values if isinstance(node, ast.Dict) else node.elts
            if len(elts) >= 8 and all(isinstance(e, ast.Constant) for e in elts):
                inside += len(elts) * (2 if isinstance(node, ast.Dict) else 1)
    return inside / max(len(nodes), 1)


def _imports(nodes: list[ast.AST]) -> tuple[int, int]:
    """(relative imports, distinct non-stdlib top-level modules)."""
    relative, third = 0, set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                relative += 1
            elif node.module and node.module.split(".")[0] not in _STDLIB:
                third.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in _STDLIB:
                    third.add(a.name.split(".")[0])
    return relative, len(third)


def _names(defs: list[ast.AST]) -> float:
    names: list[str] = []
    for d in defs:
        names.append(d.name)
        if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names += [
                a.arg for a in d.args.args + d.args.kwonlyargs if a.arg not in ("self", "cls")
            ]
    if not names:
        return 0.0
    return sum(bool(_WORDISH.match(n)) for n in names) / len(names)


def judge(code: str) -> Judgement:
    """Score one file 0–5 with rubric ``heuristic-v1`` (see the module docstring)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return Judgement(0, "does not parse as Python", 0.0)
    nodes = list(ast.walk(tree))
    defs = [
        n for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    ]
    notes: list[str] = []

    has_mod_doc = ast.get_docstring(tree) is not None
    documented = sum(ast.get_docstring(d) is not None for d in defs)
    doc_share = documented / len(defs) if defs else 0.0
    pts = 0.35 * has_mod_doc + 1.4 * doc_share
    notes.append(
        f"docstrings on {documented}/{len(defs)} defs" + (", module doc" if has_mod_doc else "")
    )

    name_share = _names(defs)
    pts += 0.75 * name_share
    notes.append(f"descriptive names {name_share:.0%}")

    ratio, code_lines = _comment_ratio(code)
    if ratio < 0.08:
        c = ratio / 0.08
    elif ratio <= 0.5:
        c = 1.0
    else:
        c = max(0.0, 1.0 - (ratio - 0.5))
    pts += 0.5 * c
    notes.append(f"comment ratio {ratio:.2f}")

    control = sum(isinstance(n, _CONTROL) for n in nodes)
    density = min(1.0, control / max(1.0, code_lines / 6))
    pts += 0.5 * bool(defs) + 0.75 * density
    notes.append(f"control flow {control}")

    relative, third = _imports(nodes)
    pts += 0.5 - 0.25 * bool(relative) - min(0.15, 0.05 * third)
    if relative or third:
        notes.append(f"{relative} relative imports, {third} non-stdlib modules")

    runs, stmts = _assignment_runs(nodes)
    lit = _literal_share(nodes)
    boiler = 2.0 * (runs / stmts) + min(1.0, 2.0 * lit)
    pts -= boiler
    if boiler >= 0.2:
        notes.append(f"boilerplate: {runs}/{stmts} statements in assignment runs, data {lit:.0%}")

    if code_lines < 4:
        pts -= 1.0
        notes.append("almost no code")
    elif code_lines > 1500:
        pts -= 0.5
        notes.append("very long")
    score = round(min(5.0, max(0.0, pts)))
    return Judgement(score, "; ".join(notes), round(pts, 3))
