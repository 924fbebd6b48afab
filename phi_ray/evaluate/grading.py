"""Optional LLM grading of completions, as phi-1's evaluation of unconventional problems.

A grader model (through :mod:`phi_ray.llm`: cached, rate-limited, budgeted) scores each
completion against a rubric from 0 to 10, in JSON. Scores and rationales are stored
beside pass/fail in ``results.jsonl``; the mean goes into ``summary.json``.
"""

from __future__ import annotations

import json
from typing import Any

RUBRIC_VERSION = "grade-v1"
RUBRIC = """You are grading a student's solution to a Python coding problem.
Read the problem (a function signature with a docstring) and the student's completion of
the function body. Grade the solution's logic and correctness from 0 to 10:
10 = correct and clean; 7-9 = correct up to a small slip; 4-6 = the right idea with
significant bugs; 1-3 = mostly wrong; 0 = empty or unrelated.

Problem:
```python
{prompt}
```

Student's completion:
```python
{completion}
```

Answer with JSON only: {{"score": <integer 0-10>, "rationale": "<one or two sentences>"}}"""


def parse_grade(text: str) -> dict[str, Any]:
    """``{"score": int 0-10, "rationale": str}`` from the grader's answer, else ParseError."""
    from phi_ray.llm import ParseError

    # What r"\{.*\}" (DOTALL) finds, without its quadratic scan of a "{{{{..." answer.
    i, j = text.find("{"), text.rfind("}")
    try:
        obj = json.loads(text[i : j + 1]) if 0 <= i < j else None
    except json.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("score"), int | float):
        raise ParseError('answer with JSON {"score": <0-10>, "rationale": "..."}')
    score = int(obj["score"])
    if not 0 <= score <= 10:
        raise ParseError("score must be an integer from 0 to 10")
    return {"score": score, "rationale": str(obj.get("rationale", ""))[:500]}


def grade(
    rows: list[dict[str, Any]],
    prompts: dict[str, str],
    llm_cfg: Any,
    cache_dir: str,
    model: str | None,
) -> dict[str, Any]:
    """Add ``grade`` / ``grade_rationale`` to each result row; return grading stats."""
    from phi_ray.llm import LLMClient, Request

    requests = [
        Request(
            id=str(i),
            messages=[
                {
                    "role": "user",
                    "content": RUBRIC.format(
                        prompt=prompts[r["task_id"]], completion=r["completion"]
                    ),
                }
            ],
            prompt_version=RUBRIC_VERSION,
            params={"temperature": 0.0, "max_tokens": 200},
        )
        for i, r in enumerate(rows)
    ]
    with LLMClient(llm_cfg, cache_dir=cache_dir, model=model) as llm:
        batch = llm.run_batch(requests, parser=parse_grade, desc="grade")
    for res in batch.results:
        row = rows[int(res.id)]
        row["grade"], row["grade_rationale"] = res.value["score"], res.value["rationale"]
    scores = [r["grade"] for r in rows if "grade" in r]
    return {
        "graded": len(scores),
        "grade_failures": len(batch.failures),
        "mean_grade": round(sum(scores) / len(scores), 3) if scores else None,
        "rubric_version": RUBRIC_VERSION,
        "llm": dict(batch.stats),
    }
