"""Method 1: exact substring and n-gram overlap with benchmark prompts and solutions.

Text is compared as a sequence of lower-cased code tokens (identifiers, numbers and single
punctuation marks), so re-indentation, blank lines and spacing do not hide a copy. A row
matches a benchmark task by

* ``exact``: it contains the task's whole prompt or reference solution as a contiguous
  token run. Solutions shorter than ``min_exact_tokens`` (``return x + y``) and those on
  the allow-list are too generic to mean anything and are never used;
* ``ngram``: it shares a word n-gram (n = 13 by default, the paper's) with the task's
  prompt or solution. N-grams are over *words* (identifiers, keywords, numbers), so that
  13 tokens of punctuation-heavy type signatures (``: list [ int ] ) -> ...``) cannot
  match on their own. N-grams found in three or more tasks are boilerplate and dropped,
  and so are those less than half words of letters (runs of doctest numbers).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from phi_ray.decontam.benchmarks import Problem

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")

# Reference solutions that are textbook idioms rather than benchmark-specific code; long
# enough to pass min_exact_tokens, yet found in countless unrelated programs.
TRIVIAL_SOLUTIONS = (
    "m = l[0]\nfor e in l:\n    if e > m:\n        m = e\nreturn m",  # HumanEval/35: max
    "for i in reversed(range(n)):\n    if n % i == 0:\n        return i",  # HumanEval/24
    "return [x for x in strings if x.startswith(prefix)]",  # HumanEval/29
    "return [x for x in values if isinstance(x, int)]",  # HumanEval/22
)

_BOILERPLATE_DF = 3  # an n-gram in this many tasks says nothing about any one of them


def code_tokens(text: str) -> list[str]:
    """Lower-cased code tokens; whitespace and layout are not tokens."""
    return _TOKEN.findall(text.lower())


def word_tokens(text: str) -> list[str]:
    """Lower-cased words: the n-gram alphabet."""
    return _WORD.findall(text.lower())


def _grams(tokens: list[str], n: int) -> set[str]:
    return {" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _wordy(gram: str, n: int) -> bool:
    return sum(not t.isdigit() for t in gram.split(" ")) * 2 >= n


@dataclass
class NgramIndex:
    """The benchmark side of method 1, built once and shipped to the Ray workers."""

    n: int
    min_exact_tokens: int = 16
    grams: dict[str, tuple[str, ...]] = field(default_factory=dict)  # word n-gram -> task ids
    # exact sources keyed by their first min_exact_tokens code tokens (one window length to
    # slide over a row), each then verified in full: anchor -> [(task id, joined tokens)]
    anchors: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    allow_listed: list[str] = field(default_factory=list)  # task ids whose solution is trivial

    @classmethod
    def build(
        cls,
        problems: Iterable[Problem],
        n: int = 13,
        min_exact_tokens: int = 16,
        allow_list: Iterable[str] = (),
    ) -> NgramIndex:
        """Index benchmark prompts and solutions (allow-listed solutions left out)."""
        allowed = {" ".join(code_tokens(s)) for s in (*TRIVIAL_SOLUTIONS, *allow_list)}
        idx = cls(n=n, min_exact_tokens=min_exact_tokens)
        by_gram: dict[str, set[str]] = defaultdict(set)
        for p in problems:
            sources = [p.prompt]
            if " ".join(code_tokens(p.solution)) in allowed:
                idx.allow_listed.append(p.task_id)
            else:
                sources.append(p.solution)
            for src in sources:
                for g in _grams(word_tokens(src), n):
                    by_gram[g].add(p.task_id)
                # A prompt counts from its `def`: copies often drop the imports above it.
                toks = code_tokens(src[src.find("def ") :] if "def " in src else src)
                if len(toks) >= min_exact_tokens:
                    anchor = " ".join(toks[:min_exact_tokens])
                    idx.anchors.setdefault(anchor, []).append((p.task_id, " ".join(toks)))
        idx.grams = {
            g: tuple(sorted(t))
            for g, t in by_gram.items()
            if len(t) < _BOILERPLATE_DF and _wordy(g, n)
        }
        return idx

    def match(self, text: str) -> tuple[list[str], list[str]]:
        """(task ids matched exactly, task ids sharing an n-gram) for one row's text."""
        hit: set[str] = set()
        for g in _grams(word_tokens(text), self.n):
            tasks = self.grams.get(g)
            if tasks:
                hit.update(tasks)
        exact: set[str] = set()
        toks = code_tokens(text)
        padded = None
        for g in _grams(toks, self.min_exact_tokens):
            for task, src in self.anchors.get(g, ()):
                if task not in exact:
                    padded = padded or f" {' '.join(toks)} "
                    if f" {src} " in padded:
                        exact.add(task)
        return sorted(exact), sorted(hit)
