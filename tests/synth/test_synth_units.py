"""Synth building blocks without Ray: topic trees, prompts, parsing, sandbox, dedup, diversity."""

from __future__ import annotations

import ast
import time
from collections import Counter

import pytest

from phi_ray.config import ConfigError, load_config
from phi_ray.synth import dedup, diversity, parse, prompts, sandbox
from phi_ray.synth.topics import TopicTree
from phi_ray.synth.validate import Checks, validate_exercise, validate_textbook

GOOD_FN = '''import math


def hypotenuse(a: float, b: float) -> float:
    """Length of the hypotenuse of a right triangle with legs a and b.

    >>> hypotenuse(3, 4)
    5.0
    >>> hypotenuse(5, 12)
    13.0
    """
    return math.sqrt(a * a + b * b)
'''


# -- topic trees ------------------------------------------------------------------------
def test_phi1_tree_is_large_weighted_and_covers_the_paper_areas():
    tree = TopicTree.load(load_config("phi1").synth.topic_tree)
    assert len(tree) >= 200
    cats = {t.category for t in tree.topics}
    for want in ("basic coding concepts", "algorithms", "data structures", "mathematics"):
        assert want in cats
    assert any("standard library" in c for c in cats)
    assert all(t.subtopics for t in tree.topics)
    assert len(tree.audiences) >= 5 and len(tree.styles) >= 4
    # Weighted: categories' weights show up in the draw frequencies.
    draws = Counter(tree.sample(0, "textbooks", i).category for i in range(4000))
    w = Counter()
    for t in tree.topics:
        w[t.category] += t.weight
    top_weight = max(w, key=w.get)
    low_weight = min(w, key=w.get)
    assert draws[top_weight] > draws[low_weight]


def test_sampling_is_a_pure_function_of_seed_kind_index():
    tree = TopicTree.load("configs/topics/tiny.yaml")
    a = [tree.sample(7, "exercises", i) for i in range(50)]
    assert a == [tree.sample(7, "exercises", i) for i in range(50)]
    assert a != [tree.sample(8, "exercises", i) for i in range(50)]
    assert all(s.func_name.isidentifier() for s in a)
    assert len({s.func_name for s in a}) > 10


def test_bad_tree_errors_name_the_key(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(
        "audiences: {a: 1}\nstyles: {s: 1}\ncategories:\n  c:\n    weight: -1\n    topics: {x: [y]}\n"
    )
    with pytest.raises(ConfigError, match=r"categories\.c\.weight"):
        TopicTree.load(p)
    with pytest.raises(ConfigError, match="no such file"):
        TopicTree.load(tmp_path / "missing.yaml")


def test_prompts_carry_every_constraint():
    s = TopicTree.load("configs/topics/tiny.yaml").sample(1, "textbooks", 3)
    text = str(prompts.textbook_messages(s))
    for v in (s.topic, s.subtopic, s.audience, s.style, s.angle, s.category):
        assert v in text
    ex = str(prompts.exercise_messages(s))
    assert f"`{s.func_name}`" in ex and s.topic in ex and s.audience in ex
    m = prompts.textbook_messages(s)
    assert prompts.prompt_hash(m, "a") != prompts.prompt_hash(m, "b")


# -- parsing -----------------------------------------------------------------------------
def test_boilerplate_and_code_blocks():
    text = "Sure! Here's a section for you.\n\n# Loops\n\nText.\n```python\nx = 1\n```\n\nI hope this helps!"
    clean = parse.strip_boilerplate(text)
    assert clean.startswith("# Loops") and "hope" not in clean
    assert parse.code_blocks(clean) == ["x = 1\n"]
    assert parse.has_unclosed_fence("a\n```python\nx = 1\n")


def test_split_pairs_docstring_with_its_own_body():
    split, reason = parse.split_exercise(GOOD_FN, "hypotenuse")
    assert reason == ""
    assert split.prompt.startswith("import math") and split.prompt.rstrip().endswith('"""')
    assert split.completion == "    return math.sqrt(a * a + b * b)\n"
    assert split.prompt + split.completion == GOOD_FN
    tree = ast.parse(split.prompt + split.completion)
    assert ast.get_docstring(tree.body[1]).startswith("Length of the hypotenuse")


@pytest.mark.parametrize(
    "code,name,reason",
    [
        ("def f(:\n  pass\n", "f", "syntax_error"),
        (GOOD_FN, "other_name", "missing_function"),
        ("def f(x):\n    return x + 1\n", "f", "no_docstring"),
        ('def f(x):\n    """Do it."""\n    pass\n', "f", "trivial_body"),
        ('def f(x):\n    """Do it."""\n    raise NotImplementedError\n', "f", "trivial_body"),
        ('def f(x):\n    """Do it."""; return x\n', "f", "inline_body"),
    ],
)
def test_split_rejections(code, name, reason):
    assert parse.split_exercise(code, name) == (None, reason)


# -- sandbox -----------------------------------------------------------------------------
def test_sandbox_passes_fails_and_kills():
    assert sandbox.run_examples(GOOD_FN).status == sandbox.PASSED
    wrong = GOOD_FN.replace("13.0", "14.0")
    r = sandbox.run_examples(wrong)
    assert r.status == sandbox.FAILED and r.attempted == 2 and r.failed == 1
    assert sandbox.run_examples("x = 1\n").status == sandbox.NO_EXAMPLES
    # An infinite loop that forks: killed at the timeout with its whole process group.
    t0 = time.time()
    loop = 'import os\nos.fork()\nwhile True:\n    pass\n"""\n>>> 1\n1\n"""\n'
    assert sandbox.run_examples(loop, timeout_s=1.0).status == sandbox.TIMEOUT
    assert time.time() - t0 < 5
    hog = 'x = bytearray(2 * 1024 ** 3)\n"""\n>>> 1\n1\n"""\n'
    assert sandbox.run_examples(hog, memory_mb=256).status == sandbox.ERROR


def test_sandbox_has_an_empty_private_cwd_and_a_stripped_env(monkeypatch):
    monkeypatch.setenv("PHI_RAY_SECRET", "s3cret")
    code = (
        "import os\n"
        "def probe():\n"
        '    """\n'
        "    >>> 'PHI_RAY_SECRET' in os.environ, os.listdir('.')\n"
        "    (False, [])\n"
        '    """\n'
    )
    r = sandbox.run_examples(code)
    assert r.status == sandbox.PASSED, r.detail


# -- validation --------------------------------------------------------------------------
def test_validate_textbook_and_exercise():
    checks = Checks(min_chars=50)
    book = f"Certainly!\n\n# Triangles\n\nSome explanation of right triangles.\n\n```python\n{GOOD_FN}```\n\n```python\n>>> hypotenuse(6, 8)\n10.0\n```\n"
    v = validate_textbook(book, None, checks)
    assert v["reason"] == "" and v["tests_status"] == "passed" and v["n_examples"] == 3
    assert v["content"].startswith("# Triangles")
    bad = book.replace("10.0", "11.0")
    assert validate_textbook(bad, None, checks)["reason"] == "examples_failed"
    assert (
        validate_textbook(book.replace("import math", "import math("), None, checks)["reason"]
        == "syntax_error"
    )
    assert validate_textbook("# Hi\n\ntext only " * 20, None, checks)["reason"] == "no_code"
    shown_output = book + "\nOutput:\n\n```\n5.0 and 13.0 (the lengths)\n```\n"
    assert validate_textbook(shown_output, None, checks)["reason"] == ""
    assert validate_textbook("# Hi", None, checks)["reason"] == "too_short"
    ex = validate_exercise(f"```python\n{GOOD_FN}```", "hypotenuse", None, checks)
    assert ex["reason"] == "" and ex["completion"].strip().startswith("return math.sqrt")


# -- dedup and diversity -----------------------------------------------------------------
def test_near_duplicates_are_found_and_distinct_texts_kept():
    base = GOOD_FN * 3
    texts = {
        "a": base,
        "b": base.replace("(5, 12)", "(5, 13)"),  # one edit per copy: near-duplicate
        "c": "def other(x):\n    return [y * 2 for y in range(x) if y % 3]\n" * 4,
    }
    sigs = [(k, dedup.signature(v)) for k, v in texts.items()]
    assert dedup.near_duplicates(sigs, 0.7) == {"b": "a"}
    assert diversity.exact_near_dup_rate(list(texts.values()), 0.7) == pytest.approx(
        1 / 3, abs=1e-3
    )


def test_diversity_report_and_coverage():
    tree = TopicTree.load("configs/topics/tiny.yaml")
    rows = [vars(tree.sample(0, "textbooks", i)) for i in range(200)]
    rep = diversity.report(
        [f"text about {r['topic']} {r['subtopic']}" for r in rows], 0.7, rows, tree
    )
    assert rep["topic_coverage"] == 1.0 and rep["topics_total"] == len(tree)
    assert 0 < rep["topic_entropy"] <= 1
    same = diversity.distinct_ngrams(["a b c d e"] * 10)
    varied = diversity.distinct_ngrams([f"a{i} b{i} c d e" for i in range(10)])
    assert same["distinct_2"] < varied["distinct_2"]


def test_deeply_nested_code_is_a_drop_not_a_crash():
    """RecursionError/MemoryError from the parser are parse failures (mined and validated)."""
    from phi_ray.synth import mine, validate

    for deep in ("x = " + "-" * 100_000 + "1\n", "x = " + "1+" * 100_000 + "1\n"):
        rows, drops = mine.mine_source(deep)  # MemoryError, RecursionError from ast.parse
        assert rows == [] and drops["file_syntax_error"] == 1
        assert validate._parses(deep) is False
