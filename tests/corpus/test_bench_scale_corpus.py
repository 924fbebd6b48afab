"""bench/scale.py's synthetic corpus: The Stack's layout as phi-ray reads it, and 10x bigger
really means 10x more distinct files (re-spelled variants must not collapse under dedup)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_ray.corpus import filters, minhash, stack

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_corpus_has_the_stack_layout_and_reads_without_drops(scale, tmp_path):
    n, mb = scale.build_stack_corpus(tmp_path, 120, 16_000)
    table = pq.read_table(tmp_path)
    assert n == table.num_rows == 120 and mb > 0
    schema = table.schema
    for name, kind in (
        ("content", pa.string()),
        ("size", pa.int64()),
        ("hexsha", pa.string()),
        ("max_stars_repo_licenses", pa.list_(pa.string())),
        ("alphanum_fraction", pa.float64()),
    ):
        assert schema.field(name).type == kind, name
    cols = stack._stack_columns(schema.names, "bench", "x")
    assert cols == {
        "content": "content",
        "path": "max_stars_repo_path",
        "repo": "max_stars_repo_name",
        "license": "max_stars_repo_licenses",
    }
    raw = stack.stack_batch(table, cols, "the-stack", "", 1 << 20)
    assert set(raw.column("drop").to_pylist()) == {""}
    assert {"MIT", "Apache-2.0,BSD-3-Clause"} >= set(raw.column("license").to_pylist())
    # Planted duplicates: every 50th source row once more verbatim under another repo.
    contents = table.column("content").to_pylist()
    assert len(set(contents)) < len(contents)


def test_respelled_variants_parse_and_are_not_near_duplicates(scale):
    sources = scale._sources(16_000)[:40]
    assert len(sources) == 40
    for _, text in sources:
        if not filters.parses(text):
            continue
        v1, v2 = scale._respell(text, 1), scale._respell(text, 2)
        assert filters.parses(v1) and filters.parses(v2)
        # Below ingest's 0.7 threshold by far: the large corpus is not the small one twice.
        assert minhash.jaccard(text, v1, 5) < 0.3
        assert minhash.jaccard(v1, v2, 5) < 0.3
