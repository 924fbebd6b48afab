"""Mined exercises from real standard-library files: the offline default of the tiny preset."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import stdlib_python_files
from synth_fixtures import write_filtered

from phi_ray.config import load_config
from phi_ray.synth.mine import mine_source
from phi_ray.synth.stage import run as synth_run


def _originals(src: str) -> dict[str, ast.FunctionDef]:
    return {
        n.name: n
        for n in ast.parse(src).body
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_mined_splits_pair_each_docstring_with_its_own_body():
    n_checked = 0
    for path in stdlib_python_files(400)[::4]:
        src = path.read_text(encoding="utf-8", errors="replace")
        splits, _ = mine_source(src)
        originals = _originals(src) if splits else {}
        for s in splits:
            fn = originals[s.func_name]
            joined = s.prompt + s.completion
            assert joined in src  # exact source segment, comments and blank lines kept
            tree = ast.parse(joined)
            (node,) = tree.body
            assert node.name == s.func_name
            assert ast.get_docstring(node) == ast.get_docstring(fn)
            # The prompt alone is the signature + docstring; the completion alone is the body.
            first = next(ln for ln in s.completion.splitlines() if ln.strip())
            indent = first[: len(first) - len(first.lstrip())]
            head = ast.parse(s.prompt + indent + "pass\n").body[0]
            assert ast.get_docstring(head) == ast.get_docstring(fn) and len(head.body) == 2
            body = ast.parse("def _f():\n" + s.completion).body[0].body
            assert [ast.dump(b) for b in body] == [ast.dump(b) for b in fn.body[1:]]
            n_checked += 1
    assert n_checked > 60


def test_mined_stage_offline_default(tiny_cfg, run_dir, ray_session):
    files = stdlib_python_files(400)[::10]
    write_filtered(run_dir, files)
    res = synth_run(tiny_cfg, run_dir)
    c = res.counts
    assert res.success["source"] == "mined"
    assert c["textbooks_skipped"] == 1
    assert "llm.base_url" in res.success["skipped_kinds"]["textbooks"]
    assert c["exercises_kept"] > 20
    assert c["exercises_drop_no_docstring"] > 0  # every candidate's fate is counted
    ex = pd.read_parquet(Path(res.path) / "exercises")
    books = pd.read_parquet(Path(res.path) / "textbooks")
    assert len(books) == 0 and "content" in books.columns  # empty, with the schema
    assert len(ex) == c["exercises_kept"] <= tiny_cfg.synth.n_exercises
    assert (ex["model"] == "mined").all() and (ex["source"] == "mined").all()
    assert (ex["tokens"] > 0).all() and (ex["cost_usd"] == 0).all()
    assert ex["id"].is_unique
    sources = {p.read_text(encoding="utf-8", errors="replace") for p in files}
    for _, r in ex.iterrows():
        joined = r["prompt"] + r["completion"]
        assert any(joined in s for s in sources)
        assert ast.get_docstring(ast.parse(joined).body[0])
    div = json.loads((Path(res.path) / "diversity.json").read_text())
    assert div["exercises"]["rows"] == len(ex) and div["exercises"]["near_dup_rate"] < 0.01
    assert div["exercises"]["distinct_topics"] > 5
    # Resumable like every stage: unchanged config -> skipped.
    assert synth_run(tiny_cfg, run_dir).skipped


def test_mined_needs_the_score_stage(tiny_cfg, run_dir, ray_session):
    with pytest.raises(FileNotFoundError, match="phi-ray score"):
        synth_run(tiny_cfg, run_dir)


def test_synth_cli_subcommand_sets_kinds():
    from phi_ray.cli import _overrides, build_parser

    args = build_parser().parse_args(["synth", "exercises", "--preset", "tiny"])
    cfg = load_config("tiny", _overrides(args))
    assert cfg.synth.kinds == ["exercises"]
