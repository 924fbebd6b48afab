"""The heuristic judge, the rubric prompt / parser and the stratified sample."""

from __future__ import annotations

import shutil

import pytest
from annotate_corpus import write_corpus

from phi_ray.annotate import heuristic
from phi_ray.annotate import sample as sample_mod
from phi_ray.annotate.rubric import build_request, parse_answer
from phi_ray.annotate.sample import open_corpus, size_bucket, stratified_sample
from phi_ray.llm import ParseError

DOCUMENTED = '''\
def celsius_to_fahrenheit(celsius: float) -> float:
    """Convert a temperature from degrees Celsius to degrees Fahrenheit."""
    # Water freezes at 0 C = 32 F, and each degree C is 1.8 degrees F.
    return celsius * 1.8 + 32


def average(numbers: list[float]) -> float:
    """Return the arithmetic mean of a non-empty list of numbers."""
    if not numbers:
        raise ValueError("average of an empty list")
    return sum(numbers) / len(numbers)
'''

ATTRIBUTES = """\
class Settings:
    def __init__(self):
        self.host = "localhost"
        self.port = 8080
        self.user = "admin"
        self.password = "admin"
        self.timeout = 30
        self.retries = 3
        self.debug = False
        self.verbose = False
        self.log_file = "/tmp/log"
        self.cache_dir = "/tmp/cache"
"""


def test_heuristic_ranks_a_documented_function_above_attribute_assignments():
    good, bad = heuristic.judge(DOCUMENTED), heuristic.judge(ATTRIBUTES)
    assert good.score >= 4 and bad.score <= 1
    assert good.points > bad.points + 2
    assert "boilerplate" in bad.rationale and "docstrings on 2/2" in good.rationale


def test_heuristic_is_deterministic_and_penalises_what_the_rubric_says():
    assert heuristic.judge(DOCUMENTED) == heuristic.judge(DOCUMENTED)
    assert heuristic.judge("def broken(:\n  pass").score == 0
    local = "from .models import User\nfrom . import db\n\n" + DOCUMENTED
    assert heuristic.judge(local).points < heuristic.judge(DOCUMENTED).points
    table = "DATA = [" + ", ".join(str(i) for i in range(300)) + "]\n"
    assert heuristic.judge(table).score <= 1
    undocumented = DOCUMENTED.replace('"""Convert', "# Convert").replace('"""Return', "# Return")
    undocumented = undocumented.replace('Fahrenheit."""', "").replace('numbers."""', "")
    assert heuristic.judge(undocumented).points < heuristic.judge(DOCUMENTED).points


def test_heuristic_spreads_scores_over_real_files(stdlib_files):
    scores = [heuristic.judge(p.read_text(errors="replace")).score for p in stdlib_files[:60]]
    assert len(set(scores)) >= 4  # a judge that says the same for everything is useless


def test_rubric_prompt_asks_the_papers_question_and_is_versioned():
    req = build_request("abc", "pkg/mod.py", "x = 1\n" * 5000, "v1", max_chars=1000)
    user = req.messages[-1]["content"]
    assert "educational value" in user and "learn basic coding concepts" in user
    assert "first 1,000 characters" in user and user.count("x = 1") < 200
    assert req.prompt_version == "annotate-v1" and req.id == "abc"
    with pytest.raises(ValueError, match="unknown rubric"):
        build_request("abc", "p", "x", "v9", max_chars=10)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 4, "rationale": "clear"}', 4),
        ('Sure!\n```json\n{"score": 2.0, "rationale": "meh"}\n```', 2),
        ('{"score": "5", "rationale": "great"}', 5),
        ("Score: 3", 3),
    ],
)
def test_parse_answer_accepts_reasonable_answers(text, score):
    assert parse_answer(text)["score"] == score


@pytest.mark.parametrize("text", ["no idea", '{"score": 7}', '{"score": 2.5}', '{"rationale": 1}'])
def test_parse_answer_rejects_the_rest(text):
    with pytest.raises(ParseError):
        parse_answer(text)


def test_stratified_sample_is_deterministic_covers_strata_and_grows_as_a_superset(
    run_dir, ray_session
):
    write_corpus(run_dir, 120, rare_every=40, files_per_part=30)
    corpus = run_dir.path("ingest", "corpus")
    ds = open_corpus(corpus)
    bounds = [2000, 10000]
    small, strata = stratified_sample(corpus, 20, bounds, seed=1)
    again, _ = stratified_sample(corpus, 20, bounds, seed=1)
    big, _ = stratified_sample(corpus, 60, bounds, seed=1)
    assert small.num_rows == 20 and sum(strata.values()) == 20
    assert small.column("id").to_pylist() == again.column("id").to_pylist()
    assert set(small.column("id").to_pylist()) <= set(big.column("id").to_pylist())
    assert "rare" in small.column("source").to_pylist()  # a 3-row source is still sampled
    every = {
        (s, size_bucket(n, bounds))
        for s, n in zip(
            *ds.to_table(columns=["source", "n_chars"]).to_pydict().values(), strict=True
        )
    }
    assert len(strata) == len(every)
    other, _ = stratified_sample(corpus, 20, bounds, seed=2)
    assert other.column("id").to_pylist() != small.column("id").to_pylist()
    everything, _ = stratified_sample(corpus, 1000, bounds, seed=1)
    assert everything.num_rows == 120


def test_stratified_sample_with_duplicate_ids_is_exact_and_unique(
    run_dir, ray_session, monkeypatch
):
    """Exact dedup off: ids repeat across files. Still one row per id, and exact sizes when
    the first candidate passes fall short (forced here: candidates aimed at 1% of quota)."""
    ids = write_corpus(run_dir, 60, files_per_part=30)
    corpus = run_dir.path("ingest", "corpus")
    shutil.copy(f"{corpus}/part-00000.parquet", f"{corpus}/part-00002.parquet")  # 30 copies
    bounds = [10**9]  # one stratum: 90 rows, 60 distinct ids
    monkeypatch.setattr(sample_mod, "_OVERSAMPLE", 0.01)
    monkeypatch.setattr(sample_mod, "_SLACK_ROWS", 0)
    for size in (7, 45):
        table, strata = stratified_sample(corpus, size, bounds, seed=3)
        got = table.column("id").to_pylist()
        assert len(got) == len(set(got)) == size == sum(strata.values()), (size, strata)
        assert set(got) <= set(ids) and table.column("content").null_count == 0
    everything, _ = stratified_sample(corpus, 500, bounds, seed=3)
    assert sorted(everything.column("id").to_pylist()) == sorted(ids)
