"""Red-team inputs for the readers beyond test_hostile_inputs: each is a counted drop
reason, never an exception out of the batch."""

from __future__ import annotations

import pyarrow as pa

from phi_ray.corpus.stackoverflow import jsonl_batches


def test_a_stackoverflow_score_too_large_for_a_float_is_a_bad_record(tmp_path):
    # JSON ints are unbounded (up to 4300 digits): float(10**400) raised OverflowError out
    # of record_sample and failed the whole file's batch.
    lines = [
        '{"title": "t", "answers": [{"body": "x", "score": ' + "9" * 400 + "}]}",
        '{"title": "t", "answers": [{"body": "y", "score": -' + "9" * 400 + "}]}",
        '{"title": "ok", "answers": [{"body": "fine", "score": 3}]}',
    ]
    f = tmp_path / "so.jsonl"
    f.write_text("\n".join(lines) + "\n")
    batch = pa.table({"file": [str(f)]})
    out = pa.concat_tables(jsonl_batches(batch, "so", "cc", 100_000, None))
    assert out.column("drop").to_pylist() == ["bad_record", "bad_record", ""]


def test_a_stack_parquet_with_a_duplicated_content_column_is_unreadable_not_a_crash(tmp_path):
    # Parquet allows two columns of one name; Arrow's Table.column(name) then raises
    # KeyError, which used to escape the row-group task and fail the ingest stage.
    import pyarrow.parquet as pq

    from phi_ray.corpus.stack import row_groups, stack_row_group_batches

    dup, good = str(tmp_path / "dup.parquet"), str(tmp_path / "good.parquet")
    cols = [pa.array(["def f():\n    pass\n"]), pa.array(["x"])]
    pq.write_table(pa.Table.from_arrays(cols, names=["content", "content"]), dup)
    pq.write_table(pa.table({"content": ["def g():\n    pass\n"], "path": ["g.py"]}), good)
    groups = row_groups(pa.table({"file": [dup, good]}), None)
    out = pa.concat_tables(stack_row_group_batches(groups, None, "s", "l", 100_000))
    assert out.column("drop").to_pylist() == ["unreadable", ""]
    assert out.column("path").to_pylist() == [dup, "g.py"]
