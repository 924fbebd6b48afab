"""Weighted topic trees and the per-sample constraints drawn from them.

The paper made GPT-3.5's textbooks diverse by constraining each prompt's topic and target
audience, and its exercises by constraining function names. A tree file
(``configs/topics/*.yaml``) holds categories -> topics -> subtopics (each weighted), plus
weighted audiences, writing styles and angles, and verbs for function names::

    audiences: {complete beginners: 3, university students: 2}
    styles: {a concise textbook section: 2}
    angles: {common mistakes and how to avoid them: 1}
    verbs: [compute, count, find]
    categories:
      basic coding concepts:
        weight: 3
        topics:
          loops: [for loops over lists, while loops]          # subtopics, weight 1
          recursion: {weight: 2, subtopics: [base cases], functions: [factorial]}

Sample ``i`` of a kind depends only on (seed, kind, i), never on how many are drawn, so a
rerun with a larger ``n`` keeps every earlier prompt (and its cached answer).
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi_ray.config import CONFIG_DIR, ConfigError, load_yaml
from phi_ray.config import resolve_path as config_resolve_path

_STOP = {"a", "an", "and", "the", "of", "in", "on", "to", "for", "with", "by", "vs", "using", "its"}


@dataclass(frozen=True)
class Topic:
    category: str
    name: str
    weight: float
    subtopics: tuple[str, ...]
    functions: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.category}/{self.name}"


@dataclass(frozen=True)
class Sample:
    """The constraints of one generated item."""

    index: int
    category: str
    topic: str
    subtopic: str
    audience: str
    style: str
    angle: str
    func_name: str


@dataclass
class TopicTree:
    """A weighted tree of topics plus audiences, styles, angles and function-name verbs."""

    topics: list[Topic]
    audiences: dict[str, float]
    styles: dict[str, float]
    angles: dict[str, float] = field(default_factory=lambda: {"": 1.0})
    verbs: list[str] = field(default_factory=lambda: ["compute"])
    source: str = "<memory>"

    def __post_init__(self) -> None:
        total = 0.0
        self._cum: list[float] = []
        for t in self.topics:
            total += t.weight
            self._cum.append(total)
        if not self.topics or total <= 0:
            raise ConfigError(f"{self.source}: topic tree has no topics with positive weight")

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> TopicTree:
        """Read a tree file; relative paths resolve against the cwd, then the repo root."""
        p = resolve_path(path)
        # The config loader's YAML: aliases and nesting bounded (an alias bomb is refused).
        data = load_yaml(p.read_text(), str(p)) or {}
        return cls.from_dict(data, str(p))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<memory>") -> TopicTree:
        if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
            raise ConfigError(f"{source}: needs a 'categories' mapping")
        topics: list[Topic] = []
        for cat, spec in data["categories"].items():
            spec = spec or {}
            where = f"{source}: categories.{cat}"
            if not isinstance(spec, dict) or not isinstance(spec.get("topics"), dict):
                raise ConfigError(f"{where}: needs a 'topics' mapping")
            cw = _weight(spec.get("weight", 1), f"{where}.weight")
            raw = {
                name: _topic_spec(v, f"{where}.topics.{name}") for name, v in spec["topics"].items()
            }
            tw_total = sum(w for w, _, _ in raw.values()) or 1.0
            for name, (w, subs, funcs) in raw.items():
                # Category weight is split among its topics by their own weights.
                topics.append(Topic(str(cat), str(name), cw * w / tw_total, subs, funcs))
        return cls(
            topics=topics,
            audiences=_weighted(data.get("audiences"), f"{source}: audiences"),
            styles=_weighted(data.get("styles"), f"{source}: styles"),
            angles=_weighted(data.get("angles") or {"": 1}, f"{source}: angles"),
            verbs=[str(v) for v in data.get("verbs") or ["compute"]],
            source=source,
        )

    # -- sampling --------------------------------------------------------------------------
    def sample(self, seed: int, kind: str, index: int) -> Sample:
        """The constraints of item ``index``: a pure function of (seed, kind, index)."""
        rng = random.Random(f"{seed}:{kind}:{index}")
        t = self.topics[bisect.bisect_right(self._cum, rng.random() * self._cum[-1])]
        sub = rng.choice(t.subtopics) if t.subtopics else t.name
        return Sample(
            index=index,
            category=t.category,
            topic=t.name,
            subtopic=sub,
            audience=_pick(rng, self.audiences),
            style=_pick(rng, self.styles),
            angle=_pick(rng, self.angles),
            func_name=self._func_name(rng, t, sub),
        )

    def _func_name(self, rng: random.Random, t: Topic, subtopic: str) -> str:
        if t.functions and rng.random() < 0.5:
            return rng.choice(t.functions)
        words = [w for w in re.findall(r"[a-z0-9]+", subtopic.lower()) if w not in _STOP]
        name = "_".join([rng.choice(self.verbs), *words[:3]]) or "solve"
        return name if name.isidentifier() else f"f_{name}"

    def topic_keys(self) -> set[str]:
        return {t.key for t in self.topics}

    def subtopic_keys(self) -> set[str]:
        return {f"{t.key}/{s}" for t in self.topics for s in t.subtopics}

    def __len__(self) -> int:
        return len(self.topics)


def resolve_path(path: str | Path) -> Path:
    """A config-relative path that must exist (see :func:`phi_ray.config.resolve_path`)."""
    p = Path(config_resolve_path(path))
    if p.exists():
        return p
    raise ConfigError(f"{path}: no such file (looked in {Path.cwd()} and {CONFIG_DIR.parent})")


def _pick(rng: random.Random, weighted: dict[str, float]) -> str:
    names = list(weighted)
    return rng.choices(names, weights=[weighted[n] for n in names])[0]


def _weight(v: Any, key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ConfigError(f"{key}: weight must be a non-negative number, got {v!r}")
    return float(v)


def _weighted(v: Any, key: str) -> dict[str, float]:
    """A ``{name: weight}`` mapping, or a plain list (equal weights)."""
    if isinstance(v, list):
        v = dict.fromkeys(v, 1)
    if not isinstance(v, dict) or not v:
        raise ConfigError(f"{key}: needs a non-empty mapping of name: weight")
    out = {str(k): _weight(w, f"{key}.{k}") for k, w in v.items()}
    if sum(out.values()) <= 0:
        raise ConfigError(f"{key}: weights sum to zero")
    return out


def _topic_spec(v: Any, key: str) -> tuple[float, tuple[str, ...], tuple[str, ...]]:
    if v is None:
        return 1.0, (), ()
    if isinstance(v, list):
        return 1.0, tuple(str(s) for s in v), ()
    if isinstance(v, dict):
        unknown = set(v) - {"weight", "subtopics", "functions"}
        if unknown:
            raise ConfigError(
                f"{key}: unknown keys {sorted(unknown)}; use weight, subtopics, functions"
            )
        funcs = tuple(str(f) for f in v.get("functions") or ())
        bad = [f for f in funcs if not f.isidentifier()]
        if bad:
            raise ConfigError(f"{key}.functions: not Python identifiers: {bad}")
        subs = tuple(str(s) for s in v.get("subtopics") or ())
        return _weight(v.get("weight", 1), f"{key}.weight"), subs, funcs
    raise ConfigError(f"{key}: expected a list of subtopics or a mapping, got {v!r}")
