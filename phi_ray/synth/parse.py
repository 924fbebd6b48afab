"""Parsing generated answers: boilerplate, code blocks, and prompt/completion splits.

Splits use ``ast`` positions over the exact source lines, so ``prompt + completion`` is
byte-for-byte the function as written (decorators, comments and blank lines kept).
"""

from __future__ import annotations

import ast
import doctest
import re
from dataclasses import dataclass

# Openings an assistant model adds that a textbook never has ("Sure! Here's ...").
_BOILER_OPEN = re.compile(
    r"^\s*(sure|certainly|of course|absolutely|okay|ok|great|alright|as an ai\b|"
    r"here(?:'s| is| are)\b|i(?:'d| would) be (?:happy|glad)|below is)[^\n]*\n+",
    re.IGNORECASE,
)
_BOILER_CLOSE = re.compile(
    r"\n+[^\n]*\b(i hope (?:this|that) helps|let me know if|feel free to ask|happy coding)"
    r"[^\n]*\s*$",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_OPEN_FENCE = re.compile(r"```[ \t]*([\w+-]*)")  # _FENCE, as _fenced applies it per line
_CLOSE_FENCE = re.compile(r"```[ \t]*")
_CLOSING = re.compile(
    r"\b(i hope (?:this|that) helps|let me know if|feel free to ask|happy coding)", re.IGNORECASE
)  # _BOILER_CLOSE's phrase, as _strip_closing looks for it in the last line
_PY_LANGS = {"", "python", "py", "python3", "pycon", "doctest"}
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
# What parsing untrusted code raises: deep nesting is a RecursionError ("during ast
# construction") or a MemoryError (the parser's stack), NUL bytes a ValueError.
PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError)


def strip_boilerplate(text: str) -> str:
    """Drop chatty openings and closings; the content itself is left untouched."""
    for _ in range(3):  # "Sure!\n\nHere is the section:\n\n# Title"
        m = _BOILER_OPEN.match(text)
        if not m:
            break
        text = text[m.end() :]
    return _strip_closing(text).strip() + "\n"


def _strip_closing(text: str) -> str:
    """``_BOILER_CLOSE.sub("\\n", text)`` in linear time: that pattern retries every newline
    of a long run (a 40 KB answer of newlines took a minute). It matches when the last
    non-blank line, after a newline, holds a closing phrase; from the run of newlines
    before that line to the end becomes one newline."""
    body = text.rstrip()
    k = body.rfind("\n")
    if k < 0 or not _CLOSING.search(body, k + 1):
        return text
    while k > 0 and text[k - 1] == "\n":
        k -= 1
    return text[:k] + "\n"


def code_blocks(text: str, tagged: bool = False) -> list[str]:
    """The contents of fenced Python (or untagged) code blocks, in order.

    ``tagged``: only blocks tagged as Python (untagged blocks are often program output).
    """
    langs = _PY_LANGS - {""} if tagged else _PY_LANGS
    return [body for lang, body in _fenced(text) if lang.lower() in langs]


def _fenced(text: str) -> list[tuple[str, str]]:
    """(language, body) of each match of ``_FENCE`` in order, in linear time: the pattern
    rescans to the end for every fence-like line when no closing fence follows (a long
    answer of "```x" lines took seconds, quadratically more for longer ones). An opening
    line starts with ```; its block ends at the next line that is ``` and blanks only;
    without one, no later block can close either."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines) - 1:  # an opening line needs the newline after it
        if not lines[i].startswith("```"):
            i += 1
            continue
        j = next((j for j in range(i + 1, len(lines)) if _CLOSE_FENCE.fullmatch(lines[j])), None)
        if j is None:
            break
        lang = _OPEN_FENCE.match(lines[i]).group(1)  # type: ignore[union-attr]
        out.append((lang, "".join(line + "\n" for line in lines[i + 1 : j])))
        i = j + 1
    return out


def has_unclosed_fence(text: str) -> bool:
    """An odd number of fences: the answer was cut off inside a code block."""
    return len(re.findall(r"^```", text, re.MULTILINE)) % 2 == 1


def is_session(block: str) -> bool:
    """A block written as an interactive session (``>>>`` lines) rather than a module."""
    first = next((ln for ln in block.splitlines() if ln.strip()), "")
    return first.lstrip().startswith(">>>")


def session_parses(block: str) -> bool:
    """Every ``>>>`` example of an interactive-session block is valid Python."""
    try:
        examples = doctest.DocTestParser().get_examples(block)
    except ValueError:
        return False
    for ex in examples:
        try:
            compile(ex.source, "<session>", "single")
        except PARSE_ERRORS:
            return False
    return bool(examples)


def source_lines(src: str) -> list[str]:
    """Lines with their endings, split exactly where ``ast`` counts lines (not on \\f)."""
    return _LINE.findall(src)


@dataclass(frozen=True)
class Split:
    """One function cut into prompt (signature + docstring) and completion (body)."""

    func_name: str
    prompt: str
    completion: str
    docstring: str


def _trivial(stmts: list[ast.stmt]) -> bool:
    """True when a body (after the docstring) does nothing: pass, ..., a constant return."""

    def trivial(s: ast.stmt) -> bool:
        if isinstance(s, ast.Pass):
            return True
        if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant):
            return True
        if isinstance(s, ast.Return):
            return s.value is None or isinstance(s.value, ast.Constant)
        if isinstance(s, ast.Raise) and s.exc is not None:
            exc = s.exc.func if isinstance(s.exc, ast.Call) else s.exc
            return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
        return False

    return all(trivial(s) for s in stmts)


def find_function(
    tree: ast.Module, name: str | None
) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The top-level function called ``name`` (the last definition wins, as at runtime)."""
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if name is not None:
        funcs = [f for f in funcs if f.name == name]
    return funcs[-1] if funcs else None


def split_function(
    src: str,
    node: ast.FunctionDef | ast.AsyncFunctionDef,
    lines: list[str] | None = None,
    preamble: bool = False,
) -> tuple[Split | None, str]:
    """Cut a top-level function of ``src`` after its docstring: (split, "") or (None, reason).

    ``preamble`` puts the module text before the function (imports, helpers) into the
    prompt, as HumanEval prompts do; mined functions take only their own lines.
    """
    doc = ast.get_docstring(node, clean=False)
    if doc is None or not doc.strip():
        return None, "no_docstring"
    body = node.body[1:]
    if not body or _trivial(body):
        return None, "trivial_body"
    doc_end = node.body[0].end_lineno or node.body[0].lineno
    if body[0].lineno <= doc_end:  # `"""doc"""; return x` on one line: no clean cut
        return None, "inline_body"
    lines = lines if lines is not None else source_lines(src)
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    start = 0 if preamble else first - 1
    prompt = "".join(lines[start:doc_end])
    completion = "".join(lines[doc_end : node.end_lineno])
    if completion and not completion.endswith(("\n", "\r")):
        completion += "\n"
    return Split(node.name, prompt, completion, ast.get_docstring(node) or ""), ""


def split_exercise(code: str, func_name: str | None) -> tuple[Split | None, str]:
    """Split a generated exercise; the reason names why one could not be made."""
    try:
        tree = ast.parse(code)
    except PARSE_ERRORS:
        return None, "syntax_error"
    node = find_function(tree, func_name)
    if node is None:
        return None, "missing_function"
    return split_function(code, node, preamble=True)
