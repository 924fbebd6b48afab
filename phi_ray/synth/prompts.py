"""Prompts for textbooks and exercises, built from a sample's constraints.

Every constraint drawn from the topic tree (topic, subtopic, audience, style, angle,
function name) is written into the prompt verbatim: that is what makes the generated set
diverse, and the tests check that each one reaches the request.
"""

from __future__ import annotations

import hashlib
import json

from phi_ray.synth.topics import Sample

PROMPT_VERSION = "v1"  # bump when the wording changes: it is part of the prompt hash

TEXTBOOK_SYSTEM = (
    "You are an expert computer science teacher who writes clear, correct and engaging "
    "Python textbooks. You write in Markdown and put all code in ```python blocks."
)

TEXTBOOK_USER = """\
Write a section of a Python textbook about "{topic}", focusing on "{subtopic}" \
(part of the chapter on {category}).
Target audience: {audience}.
Writing style: {style}.
Emphasis: {angle}.

The section must contain, in this order:
1. An explanation of the concept in plain language.
2. A worked example, reasoned through step by step.
3. A Python implementation in a ```python block: a function with a docstring that \
includes doctest examples (lines starting with >>>) whose outputs are exactly right.
4. Example usage of the implementation.

Use only the Python standard library. Begin directly with the section title: no \
preamble such as "Sure" or "Here is"."""

EXERCISE_SYSTEM = (
    "You write Python programming exercises with reference solutions. You answer with "
    "exactly one ```python block and nothing else."
)

EXERCISE_USER = """\
Write one Python exercise about {topic} ({subtopic}) for {audience}.
The exercise is a function named `{func_name}`.

Give the complete function in one ```python block:
- its signature, with type hints;
- a docstring that states the task precisely and includes two or three doctest \
examples (lines starting with >>>) whose outputs are exactly right;
- a correct, readable implementation after the docstring.
Put any imports above the function. Use only the standard library. Do not add code \
outside the function other than imports."""


def textbook_messages(s: Sample) -> list[dict[str, str]]:
    """Chat messages asking for one textbook section constrained by ``s``."""
    user = TEXTBOOK_USER.format(
        topic=s.topic,
        subtopic=s.subtopic,
        category=s.category,
        audience=s.audience,
        style=s.style,
        angle=s.angle or "the core idea and one worked example",
    )
    return [{"role": "system", "content": TEXTBOOK_SYSTEM}, {"role": "user", "content": user}]


def exercise_messages(s: Sample) -> list[dict[str, str]]:
    """Chat messages asking for one exercise whose function is named ``s.func_name``."""
    user = EXERCISE_USER.format(
        topic=s.topic, subtopic=s.subtopic, audience=s.audience, func_name=s.func_name
    )
    return [{"role": "system", "content": EXERCISE_SYSTEM}, {"role": "user", "content": user}]


def prompt_hash(messages: list[dict[str, str]], model: str) -> str:
    """sha256 of the model and the exact messages sent: the provenance of a generated row."""
    blob = json.dumps({"v": PROMPT_VERSION, "model": model, "messages": messages}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
