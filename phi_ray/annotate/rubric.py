"""The versioned rubric prompt of the LLM judge, and the parser of its answers.

``v1`` asks the paper's question (phi-1, section 2.1: "determine its educational value for
a student whose goal is to learn basic coding concepts") and wants a 0–5 score with a
short rationale as JSON. A new wording gets a new version: the version is part of every
cache key and of every label row, so labels from different prompts never mix silently.
"""

from __future__ import annotations

import json
import re
from typing import Any

from phi_ray.llm import ParseError, Request

_SYSTEM_V1 = (
    "You are an experienced computer-science teacher who reviews code for a programming "
    "course. You judge files strictly and consistently, and you answer only in JSON."
)

_USER_V1 = """\
Determine the educational value of the following Python file for a student whose goal is \
to learn basic coding concepts.

Score it from 0 to 5:
0 - no educational value: data, configuration, auto-generated or boilerplate code.
1 - little value: mostly glue, settings or repetitive assignments; hard to learn from.
2 - some value: real logic, but unclear, undocumented or dependent on unseen local modules.
3 - useful: readable, self-contained logic a student can follow, with some explanation.
4 - good: clear, well-named, documented code that teaches a concept or algorithm.
5 - excellent: textbook quality; clean, self-contained, documented and instructive.

Answer with JSON only, in this exact form:
{{"score": <integer 0-5>, "rationale": "<one or two sentences>"}}

File `{path}`{truncated}:
```python
{code}
```"""

_REPAIR_V1 = (
    "That answer could not be read ({error}). Reply with JSON only, exactly "
    '{{"score": <integer 0-5>, "rationale": "<one or two sentences>"}}.'
)

RUBRICS: dict[str, tuple[str, str, str]] = {"v1": (_SYSTEM_V1, _USER_V1, _REPAIR_V1)}


def check_version(version: str) -> None:
    if version not in RUBRICS:
        raise ValueError(
            f"annotate.rubric_version: unknown rubric {version!r}; known: {', '.join(RUBRICS)}"
        )


def build_request(
    row_id: str, path: str, code: str, version: str, max_chars: int, max_tokens: int = 200
) -> Request:
    """The chat request that asks the judge about one file (head kept when too long)."""
    check_version(version)
    system, user, repair = RUBRICS[version]
    truncated = ""
    if len(code) > max_chars:
        code = code[:max_chars]
        truncated = f" (first {max_chars:,} characters shown)"
    content = user.format(path=path or "?", truncated=truncated, code=code)
    return Request(
        id=row_id,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": content}],
        params={"max_tokens": max_tokens},
        prompt_version=f"annotate-{version}",
        repair=repair,
    )


_SCORE = re.compile(r"score\W{0,5}([0-5](?:\.0)?)\b", re.I)


def parse_answer(text: str) -> dict[str, Any]:
    """``{"score": int 0-5, "rationale": str}`` from a judge's answer, or :class:`ParseError`.

    Takes the first JSON object in the text (code fences and chatter around it are
    tolerated); a bare "score: 4" is accepted as a last resort, with an empty rationale.
    """
    text = text or ""
    # What r"\{.*\}" (DOTALL) finds, without its quadratic scan of a "{{{{..." answer.
    i, j = text.find("{"), text.rfind("}")
    if 0 <= i < j:
        try:
            obj = json.loads(text[i : j + 1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and "score" in obj:
            # "\ud800" in the answer's JSON is a lone surrogate: no Parquet can hold it.
            why = re.sub("[\ud800-\udfff]", "\ufffd", str(obj.get("rationale", "")))
            return {"score": _score(obj["score"]), "rationale": why[:1000]}
    m = _SCORE.search(text)
    if m:
        return {"score": _score(m.group(1)), "rationale": ""}
    raise ParseError('expected JSON like {"score": 3, "rationale": "..."}')


def _score(value: Any) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ParseError(f"score {value!r} is not a number") from None
    if not (0 <= f <= 5) or f != int(f):
        raise ParseError(f"score {value!r} is not an integer from 0 to 5")
    return int(f)
