"""Red-team: an LLM answer (a server that ignores max_tokens can send megabytes) must be
cleaned in linear time; the linear scans match the patterns they replace."""

from __future__ import annotations

import random
import time

from phi_ray.synth import parse


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def test_hostile_answers_are_cleaned_in_linear_time():
    # Were: 57 s for 40,000 newlines (_BOILER_CLOSE), 4 s for 40 KB of "```x" lines (_FENCE).
    assert _timed(parse.strip_boilerplate, "\n" * 1_000_000 + "x") < 2.0
    assert _timed(parse.code_blocks, "```\n" + "```x\n" * 200_000) < 2.0


def test_the_linear_scans_match_the_patterns_they_replace():
    rng = random.Random(0)
    parts = ["```", "\n", "x", " ", "py", "\t", "python", "\r", "I hope this helps",
             "Happy coding", "Sure! ", "-", "\n\n", " \n"]  # fmt: skip
    for _ in range(3000):
        s = "".join(rng.choice(parts) for _ in range(rng.randint(0, 14)))
        want = [(m.group(1), m.group(2)) for m in parse._FENCE.finditer(s)]
        assert parse._fenced(s) == want, s
        assert parse._strip_closing(s) == parse._BOILER_CLOSE.sub("\n", s), s


def test_a_topic_tree_alias_bomb_is_refused_at_once(tmp_path):
    # The topic tree was read with yaml.safe_load, whose aliases are unbounded: a few
    # hundred bytes expand to 9**9 nodes (the config loader's bound did not apply here).
    import pytest

    from phi_ray.config import ConfigError
    from phi_ray.synth.topics import TopicTree

    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]")
    lines.append("categories: {c: {topics: {t: *i}}}")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias"):
        TopicTree.load(str(bomb))
    assert time.perf_counter() - t0 < 2.0
