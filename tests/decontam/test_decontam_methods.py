"""The three decontamination methods, benchmark loading and bad input, without Ray."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from decontam_helpers import PLANT_TASKS, exact, planted, renamed, write_exercises

from phi_ray.config import ConfigError, DecontamConfig, load_config
from phi_ray.decontam import astmatch
from phi_ray.decontam.benchmarks import BenchmarkError, load_benchmarks, load_humaneval
from phi_ray.decontam.embed_nn import _knn_numpy, knn, l2_threshold
from phi_ray.decontam.inputs import DatasetError, resolve
from phi_ray.decontam.match import MATCH_SCHEMA, add_text
from phi_ray.decontam.ngram import NgramIndex
from phi_ray.decontam.sweep import dataset_summary, matched_rows, row_report


@pytest.fixture(scope="module")
def humaneval():
    return {p.task_id: p for p in load_humaneval()}


@pytest.fixture(scope="module")
def rows():
    return planted(n_unrelated=25)


def _text(row: dict) -> str:
    return row["prompt"] + row["completion"]


def test_humaneval_loads_from_the_package(humaneval):
    assert len(humaneval) == 164
    p = humaneval["HumanEval/0"]
    assert p.entry_point == "has_close_elements" and p.code.startswith(p.prompt)


def test_ngram_catches_exact_copies_but_not_renamed_or_unrelated(humaneval, rows):
    idx = NgramIndex.build(humaneval.values())
    for r in rows["exact"]:
        ex, ng = idx.match(_text(r))
        task = next(t for t in PLANT_TASKS if humaneval[t].entry_point == r["func_name"])
        assert task in ex and task in ng
    for r in rows["renamed"] + rows["unrelated"]:
        assert idx.match(_text(r)) == ([], []), r["func_name"]


def test_ngram_survives_reformatting_and_ignores_trivial_solutions(humaneval):
    idx = NgramIndex.build(humaneval.values())
    p = humaneval["HumanEval/0"]
    squashed = "\n\n".join(line.strip() for line in p.solution.splitlines())  # layout changed
    assert idx.match(f"# my helper\n{squashed}")[0] == ["HumanEval/0"]
    # `return x + y` (HumanEval/53) and the allow-listed max loop (HumanEval/35) are idioms.
    assert idx.match("def add(a, b):\n    return x + y\n") == ([], [])
    assert idx.match(humaneval["HumanEval/35"].solution)[0] == []
    custom = NgramIndex.build(humaneval.values(), allow_list=[humaneval["HumanEval/0"].solution])
    assert "HumanEval/0" in custom.allow_listed
    assert custom.match(p.solution)[0] == []


def test_ast_match_rate_renamed_copy_is_one_and_unrelated_is_low(humaneval, rows):
    bench = {t: astmatch.units(p.code, p.entry_point) for t, p in humaneval.items()}
    for r in rows["renamed"]:
        best = max(bench, key=lambda t: astmatch.match_rate(astmatch.units(_text(r)), bench[t]))
        assert astmatch.match_rate(astmatch.units(_text(r)), bench[best]) == 1.0
        assert best in PLANT_TASKS
    for r in rows["unrelated"]:
        u = astmatch.units(_text(r))
        assert u, r["func_name"]
        assert max(astmatch.match_rate(u, b) for b in bench.values()) < 0.8, r["func_name"]
    # partial copies (extra statements) fall between the taus
    for r in rows["partial"]:
        u = astmatch.units(_text(r))
        assert 0.8 <= max(astmatch.match_rate(u, b) for b in bench.values()) < 0.95


def test_ast_normalisation():
    a = "def f(x, n):\n    '''Doc.'''\n    import os\n    return [x * 2 for _ in range(n)]\n"
    b = "def g(value, count):\n    return [value * 7 for _ in range(count)]  # other constant\n"
    c = "def g(value, count):\n    return [value.upper() for _ in range(count)]\n"
    assert astmatch.units(a) == astmatch.units(b)
    assert astmatch.match_rate(astmatch.units(a), astmatch.units(c)) < 1.0
    assert astmatch.units("def broken(:\n") == []
    md = "Some text.\n```python\ndef f(x, n):\n    return [x * 2 for _ in range(n)]\n```\n"
    assert astmatch.units(md) == astmatch.units(a)
    assert astmatch.match_rate(astmatch.units(a), astmatch.units(c), cutoff=0.99) == 0.0
    assert astmatch.normalized_source(a) == astmatch.normalized_source(b.replace("7", "2"))


def test_knn_matches_brute_force_across_blocks(monkeypatch):
    import phi_ray.decontam.embed_nn as embed_nn

    rng = np.random.default_rng(0)
    q, b = rng.normal(size=(700, 8)), rng.normal(size=(230, 8))
    monkeypatch.setattr(embed_nn, "_BLOCK_ELEMS", 3000)  # many row and column blocks
    idx, dist = _knn_numpy(q.astype(np.float32), b.astype(np.float32), 4)
    full = np.sqrt(((q[:, None] - b[None]) ** 2).sum(-1))
    ref = np.argsort(full, 1)[:, :4]
    assert (idx == ref).all()
    assert np.allclose(dist, np.take_along_axis(full, ref, 1), atol=1e-4)
    i2, _ = knn(q, b, 500)  # k above m is capped at m
    assert i2.shape == (700, 230)
    bb = np.sqrt(((b[:, None] - b[None]) ** 2).sum(-1))
    upper = bb[np.triu_indices(230, 1)]
    assert l2_threshold(b.astype(np.float32), 0.1) == pytest.approx(np.quantile(upper, 0.1), 1e-4)
    assert l2_threshold(b, 1.0) == float("inf") and l2_threshold(b, 0.1, l2_max=2.5) == 2.5


def test_sweep_counts_are_monotone_and_name_task_ids():
    rng = np.random.default_rng(1)
    n, taus = 300, [0.8, 0.85, 0.9, 0.95]
    recs = []
    for i in range(n):
        rate = float(rng.uniform(0.6, 1.0))
        hard = i % 37 == 0
        recs.append(
            {
                "id": f"r{i}",
                "exact": ["HumanEval/1"] if hard else [],
                "ngram": ["HumanEval/1"] if hard else [],
                "ast_tasks": ["HumanEval/2"] if rate >= 0.8 else [],
                "ast_rates": [rate] if rate >= 0.8 else [],
                "ast_l2": [0.5] if rate >= 0.8 else [],
                "score": 2.0 if hard else (rate if rate >= 0.8 else 0.0),
                "unparsed": False,
                "n_pairs": 3,
                "t_ngram": 0.0,
                "t_embed": 0.0,
                "t_ast": 0.0,
            }
        )
    table = pa.Table.from_pylist(recs, schema=MATCH_SCHEMA)
    rows = matched_rows(table, min(taus))
    s = dataset_summary(table, rows, taus, "embed_ast")
    removed = [s["taus"][f"tau={t:g}"]["removed"] for t in sorted(taus)]
    assert removed == sorted(removed, reverse=True) and removed[0] > removed[-1]
    assert s["taus"]["tau=0.95"]["by_reason"]["exact"] == len(range(0, n, 37))
    bench_of = {"HumanEval/1": "humaneval", "HumanEval/2": "humaneval"}
    for r in rows:
        rep = row_report(r, "exercises", taus, bench_of, "embed_ast")
        assert rep["matches"] and all(m["task_id"].startswith("HumanEval/") for m in rep["matches"])


def _cfg(**kw) -> DecontamConfig:
    base = {"benchmarks": ["humaneval"]}
    return DecontamConfig(**{**base, **kw})


def test_mbpp_local_jsonl_extra_benchmarks_and_offline_skip(tmp_path, monkeypatch):
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(
        json.dumps(
            {
                "task_id": 2,
                "text": "Write a function to find the shared elements from the given two lists.",
                "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))",
                "test_list": ["assert similar_elements((3, 4), (4, 5)) == (4,)"],
            }
        )
        + "\n"
    )
    extra = tmp_path / "my_bench.jsonl.gz"
    with gzip.open(extra, "wt") as f:
        f.write(
            json.dumps(
                {"task_id": "my/0", "prompt": "def f(x):\n", "canonical_solution": "    return x\n"}
            )
        )
    probs, status = load_benchmarks(
        _cfg(benchmarks=["humaneval", "mbpp"], mbpp_path=str(mbpp), extra_benchmarks=[str(extra)])
    )
    by_id = {p.task_id: p for p in probs}
    assert by_id["mbpp/2"].entry_point == "similar_elements"
    assert by_id["my/0"].benchmark == "my_bench"
    assert status["mbpp"] == {"status": "loaded", "problems": 1}
    # MBPP without a path, hub disabled: skipped with a reason, not an error.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probs, status = load_benchmarks(_cfg(benchmarks=["humaneval", "mbpp"]))
    assert status["mbpp"]["status"] == "skipped" and "mbpp_path" in status["mbpp"]["reason"]
    assert len(probs) == 164


def test_bad_benchmark_files_are_errors_naming_them(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"task_id": "x/0", "prompt": "p", "canonical_solution": "s"}\n{not json\n')
    with pytest.raises(BenchmarkError, match=r"broken\.jsonl, line 2"):
        load_benchmarks(_cfg(extra_benchmarks=[str(bad)]))
    fields = tmp_path / "fields.jsonl"
    fields.write_text('{"task_id": "x/0", "question": "q"}\n')
    with pytest.raises(BenchmarkError, match=r"fields\.jsonl.*canonical_solution"):
        load_benchmarks(_cfg(benchmarks=[], extra_benchmarks=[str(fields)]))
    with pytest.raises(BenchmarkError, match="no such file"):
        load_benchmarks(_cfg(benchmarks=["mbpp"], mbpp_path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(BenchmarkError, match="unknown"):
        load_benchmarks(_cfg(benchmarks=["apps"]))


def test_datasets_without_expected_columns_are_errors_naming_them(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="synth"):
        resolve(run_dir, "exercises")
    bad = [{"id": "a", "prompt": "def f():\n", "func_name": "f"}]  # no completion
    write_exercises(run_dir, bad)
    with pytest.raises(DatasetError, match=r"'exercises'.*missing column\(s\) \['completion'\]"):
        resolve(run_dir, "exercises")
    with pytest.raises(DatasetError, match=r"textbooks.*does not exist"):
        resolve(run_dir, "textbooks")
    with pytest.raises(DatasetError, match="neither"):
        resolve(run_dir, "nonsense")


def test_text_columns_and_content_datasets(run_dir):
    rows = [exact(load_humaneval()[0]), renamed(load_humaneval()[1])]
    write_exercises(run_dir, rows)
    d = resolve(run_dir, "exercises")
    assert d.text_columns == ["prompt", "completion"]
    t = add_text(pq.read_table(f"{d.path}").select(d.columns), d.text_columns)
    assert sorted(t["_text"].to_pylist()) == sorted(_text(r) for r in rows)
    write_exercises(run_dir, [{"id": "b", "content": "x = 1"}], sub="textbooks")
    assert resolve(run_dir, "textbooks").text_columns == ["content"]


def test_config_validation():
    with pytest.raises(ConfigError, match="use_tau"):
        load_config("tiny", ["decontam.use_tau=0.7"])
    with pytest.raises(ConfigError, match="l2_quantile"):
        load_config("tiny", ["decontam.l2_quantile=0"])
    cfg = load_config("phi1")
    assert cfg.decontam.use_tau == 0.9 and cfg.decontam.embed_text == "code"
