"""Validation of generated answers: each returns the cleaned row or a drop reason.

Textbooks: boilerplate stripped, long enough, at least one code block, every code block
parses (``>>>`` session blocks example by example), examples executed in the sandbox.
Exercises: the named function exists with a docstring and a non-trivial body, is cut into
prompt and completion, and its doctests run in the sandbox against the completion.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from phi_ray.synth import parse, sandbox


@dataclass(frozen=True)
class Checks:
    """The knobs of validation (from ``SynthConfig``)."""

    min_chars: int = 200
    min_exercise_chars: int = 80
    exec_timeout_s: float = 5.0
    exec_memory_mb: int = 512
    drop_failing: bool = True  # drop rows whose examples fail, error or time out
    require_examples: bool = False  # drop rows without any example to run
    run_examples: bool = True
    allow_weak_sandbox: bool = False  # run examples even where the sandbox is weak


def _exec_verdict(res: sandbox.ExecResult, checks: Checks) -> str:
    if checks.drop_failing and res.status in (sandbox.FAILED, sandbox.ERROR, sandbox.TIMEOUT):
        return f"examples_{res.status}"
    if checks.require_examples and res.status == sandbox.NO_EXAMPLES:
        return "no_examples"
    return ""


def _run(code: str, sessions: list[str], checks: Checks) -> sandbox.ExecResult:
    if not checks.run_examples:
        return sandbox.ExecResult(sandbox.NOT_RUN)
    return sandbox.run_examples(
        code, sessions, checks.exec_timeout_s, checks.exec_memory_mb, checks.allow_weak_sandbox
    )


def _parses(code: str) -> bool:
    if parse.is_session(code):
        return parse.session_parses(code)
    try:
        ast.parse(code)
    except parse.PARSE_ERRORS:  # deep nesting raises RecursionError/MemoryError too
        return False
    return True


def validate_textbook(text: str, finish_reason: str | None, checks: Checks) -> dict[str, Any]:
    """``{"reason": "", "content": ..., "tests_status": ...}``; a non-empty reason drops it."""
    out: dict[str, Any] = {"reason": "", "content": "", "tests_status": sandbox.NOT_RUN}
    if finish_reason == "length" or parse.has_unclosed_fence(text):
        return {**out, "reason": "truncated"}
    content = parse.strip_boilerplate(text)
    out["content"] = content
    if len(content.strip()) < checks.min_chars:
        return {**out, "reason": "too_short"}
    tagged = parse.code_blocks(content, tagged=True)
    # Untagged blocks count as code only when they parse: they are often shown output.
    blocks = [b for b in parse.code_blocks(content) if b in tagged or _parses(b)]
    if not blocks:
        return {**out, "reason": "no_code"}
    modules, sessions = [], []
    for b in blocks:
        if parse.is_session(b):
            if not parse.session_parses(b):
                return {**out, "reason": "syntax_error"}
            sessions.append(b)
        elif _parses(b):
            modules.append(b)
        else:
            return {**out, "reason": "syntax_error"}
    # Later blocks use earlier ones (the usage block calls the implementation): one module.
    res = _run("\n\n".join(modules), sessions, checks)
    out.update(tests_status=res.status, n_examples=res.attempted)
    out["reason"] = _exec_verdict(res, checks)
    return out


def exercise_code(text: str, func_name: str | None) -> str:
    """The code of an exercise answer: the block defining the function, else the text."""
    blocks = parse.code_blocks(text)
    for b in blocks:
        if func_name is None or f"def {func_name}" in b:
            return b
    return blocks[0] if blocks else text


def validate_exercise(
    text: str, func_name: str | None, finish_reason: str | None, checks: Checks
) -> dict[str, Any]:
    """``{"reason", "prompt", "completion", "func_name", "tests_status", ...}``."""
    out: dict[str, Any] = {
        "reason": "",
        "prompt": "",
        "completion": "",
        "func_name": func_name or "",
        "tests_status": sandbox.NOT_RUN,
    }
    if finish_reason == "length" or parse.has_unclosed_fence(text):
        return {**out, "reason": "truncated"}
    code = exercise_code(parse.strip_boilerplate(text), func_name)
    split, reason = parse.split_exercise(code, func_name)
    if split is None:
        return {**out, "reason": reason}
    out.update(prompt=split.prompt, completion=split.completion, func_name=split.func_name)
    if len((split.prompt + split.completion).strip()) < checks.min_exercise_chars:
        return {**out, "reason": "too_short"}
    res = _run(split.prompt + split.completion, [], checks)
    out.update(tests_status=res.status, n_examples=res.attempted)
    out["reason"] = _exec_verdict(res, checks)
    return out
