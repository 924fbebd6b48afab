"""Method 3: AST match rate between a row's code and a benchmark reference.

Each snippet is parsed and *normalised* before comparison, so that what remains is the
program's structure:

* docstrings, imports and comments (the latter already gone in an AST) are dropped;
* local identifiers (variables, arguments, functions, classes) are renamed by order of
  first appearance (``v0, v1, ...``), so a copy with renamed variables normalises to the
  same tree; builtins (``len``, ``range``), attribute and keyword names are kept, because
  they carry meaning;
* constants become their type (string, number, bool, None), so ``range(10)`` and
  ``range(5)`` agree.

The normalised tree is serialised in pre-order, one character per node type, identifier
or constant type, with a closing mark after each node's children: a compact, lossless
string of the normalised ``ast.dump``, far shorter than the dump itself (faster to compare).

**Match rate.** For a row and a benchmark task, ``match_rate`` is the highest normalised
Indel similarity, ``1 - indel_distance / (len(a) + len(b))`` = ``2·LCS / (len(a) + len(b))``
(``rapidfuzz.distance.Indel``; 1.0 = identical normalised ASTs), over every pair of
*units*: a unit is a whole module (imports and docstrings removed) or one function in it.
The benchmark's unit is its tested function (``entry_point``) and its whole reference; the
row's units are its module and each of its functions, so a copy buried among other code
still matches. A row is an AST match of the task at threshold τ when ``match_rate >= τ``.
"""

from __future__ import annotations

import ast
import builtins
import re
import zlib
from collections.abc import Sequence
from typing import Any

from rapidfuzz.distance import Indel

_NODE_TYPES = sorted(
    n
    for n in dir(ast)
    if isinstance(getattr(ast, n), type) and issubclass(getattr(ast, n), ast.AST)
)
_TYPE_CHAR = {getattr(ast, n): chr(0x100 + i) for i, n in enumerate(_NODE_TYPES)}
_CLOSE = ")"
_BUILTINS = frozenset(dir(builtins))
_LOCAL_BASE = 0xAC00  # canonical local names v0, v1, ... (11k code points available)
_NAMED_BASE, _NAMED_SPAN = 0x4E00, 4096  # kept names (builtins, attributes), by stable hash
_IDENT_FIELDS = {"id", "arg", "name"}  # Name.id, arg.arg, FunctionDef/ClassDef.name
_KEPT_FIELDS = {"attr"}  # attribute names: kept (`.append` means something)
_FENCE = re.compile(r"```(?:python|py)?\n(.*?)```", re.S)


def _kept(name: str) -> str:
    return chr(_NAMED_BASE + zlib.crc32(name.encode()) % _NAMED_SPAN)


def _const(value: object) -> str:
    if isinstance(value, bool) or value is None or value is Ellipsis:
        return {True: "T", False: "F", None: "O"}.get(value, "E")  # type: ignore[call-overload]
    if isinstance(value, (int, float, complex)):
        return "N"
    return "B" if isinstance(value, bytes) else "S"


def _strip(body: list[ast.stmt]) -> list[ast.stmt]:
    """A body without its docstring and imports."""
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        body = body[1:] if isinstance(first.value.value, str) else body
    return [s for s in body if not isinstance(s, (ast.Import, ast.ImportFrom))]


class _Serializer:
    """Pre-order serialisation of one unit with its own local-name numbering."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.out: list[str] = []

    def ident(self, name: str) -> str:
        if name in _BUILTINS:
            return _kept(name)
        if name not in self.names:
            self.names[name] = chr(_LOCAL_BASE + min(len(self.names), 11000))
        return self.names[name]

    def visit(self, root: ast.AST) -> None:
        # Iterative, not recursive: a 2,000-term expression parses (ast.parse goes deeper
        # than Python's recursion limit) and a recursive walk then raised RecursionError
        # out of decontam. The stack holds nodes, ("ident"/"kept", text) to write when
        # reached (identifiers are numbered in visiting order), and int marks: the length
        # of ``out`` after a node's type char, closing the node if it wrote anything since.
        out = self.out
        stack: list[Any] = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, int):
                if len(out) > item:
                    out.append(_CLOSE)
                continue
            if isinstance(item, tuple):
                kind, text = item
                out.append(self.ident(text) if kind == "ident" else _kept(text))
                continue
            node = item
            if isinstance(node, ast.expr_context):
                continue  # Load/Store/Del: implied by position
            out.append(_TYPE_CHAR.get(type(node), "?"))
            if isinstance(node, ast.Constant):
                out.append(_const(node.value))
                continue
            todo: list[Any] = []
            for name, value in ast.iter_fields(node):
                if name == "body" and isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
                ):
                    value = _strip(value)
                if isinstance(value, ast.AST):
                    todo.append(value)
                elif isinstance(value, list):
                    for v in value:
                        if isinstance(v, ast.AST):
                            todo.append(v)
                        elif isinstance(v, str):  # Global / Nonlocal names
                            todo.append(("ident", v))
                elif isinstance(value, str):
                    if name in _IDENT_FIELDS:
                        todo.append(("ident", value))
                    elif name in _KEPT_FIELDS or (name == "arg" and isinstance(node, ast.keyword)):
                        todo.append(("kept", value))
            stack.append(len(out))
            stack.extend(reversed(todo))


def serialize(node: ast.AST) -> str:
    """The normalised pre-order string of one AST unit."""
    s = _Serializer()
    if isinstance(node, ast.Module):
        node = ast.Module(body=_strip(node.body), type_ignores=[])
    s.visit(node)
    return "".join(s.out)


def parse_code(text: str) -> ast.Module | None:
    """Parse a snippet; Markdown (textbooks) falls back to its fenced Python blocks."""
    for candidate in (text, "\n".join(_FENCE.findall(text))):
        if not candidate.strip():
            continue
        try:
            return ast.parse(candidate)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
    return None


def units(code: str, entry_point: str | None = None) -> list[str]:
    """Normalised units of a snippet: the module and its functions (or just the entry point's).

    Empty when the code does not parse.
    """
    tree = parse_code(code)
    if tree is None:
        return []
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if entry_point:
        funcs = [f for f in funcs if f.name == entry_point] or funcs
    out = [serialize(tree)]
    out += [serialize(f) for f in funcs]
    return list(dict.fromkeys(u for u in out if u))  # unique, order kept


def match_rate(row_units: Sequence[str], bench_units: Sequence[str], cutoff: float = 0.0) -> float:
    """Highest normalised Indel similarity over unit pairs; 0.0 below ``cutoff``."""
    best = 0.0
    for a in row_units:
        for b in bench_units:
            s = Indel.normalized_similarity(a, b, score_cutoff=max(cutoff, best))
            if s > best:
                best = s
                if best >= 1.0:
                    return 1.0
    return best


class _Canon(ast.NodeTransformer):
    """Renames locals to v0, v1, ... and drops docstrings and imports (source stays valid)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        if name in _BUILTINS:
            return name
        return self.names.setdefault(name, f"v{len(self.names)}")

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self._name(node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self._name(node.arg)
        self.generic_visit(node)
        return node

    def visit_FunctionDef(self, node: ast.AST) -> ast.AST:
        node.name = self._name(node.name)  # type: ignore[attr-defined]
        node.body = _strip(node.body) or [ast.Pass()]  # type: ignore[attr-defined]
        self.generic_visit(node)
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef


def normalized_source(code: str) -> str:
    """The snippet as source with locals renamed, docstrings and imports dropped.

    What the embedder sees when ``decontam.embed_text`` is ``normalized``: renamed copies
    then embed identically even with an embedder that knows no semantics (the tiny
    preset's randomly initialised one). Unparseable text is returned unchanged.
    """
    tree = parse_code(code)
    if tree is None:
        return code
    try:
        tree = _Canon().visit(ast.Module(body=_strip(tree.body), type_ignores=[]))
        return ast.unparse(tree)
    except (ValueError, RecursionError):
        return code
