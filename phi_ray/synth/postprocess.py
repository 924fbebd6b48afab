"""Validation on Ray Data, exact and near-duplicate removal, and output rows.

Validation (which runs sandboxed subprocesses) and MinHash signatures are computed in
Ray Data workers, batch by batch; the driver only collects rows and runs LSH banding.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi_ray.runs import RunDir
from phi_ray.synth import dedup
from phi_ray.synth.validate import Checks, validate_exercise, validate_textbook

TEXTBOOK_COLUMNS = [
    "id", "kind", "content", "topic", "subtopic", "audience", "style", "model", "prompt_hash",
    "tokens", "cost_usd", "category", "angle", "prompt_tokens", "completion_tokens",
    "tests_status", "n_examples", "sample_index",
]  # fmt: skip
EXERCISE_COLUMNS = [
    "id", "kind", "prompt", "completion", "func_name", "topic", "audience", "model", "source",
    "prompt_hash", "tokens", "cost_usd", "subtopic", "category", "prompt_tokens",
    "completion_tokens", "tests_status", "n_examples", "sample_index", "source_id",
]  # fmt: skip
_INT = {"tokens", "prompt_tokens", "completion_tokens", "n_examples", "sample_index"}


def checks_from(synth: Any) -> Checks:
    return Checks(
        min_chars=synth.min_chars,
        min_exercise_chars=synth.min_exercise_chars,
        exec_timeout_s=synth.exec_timeout_s,
        exec_memory_mb=synth.exec_memory_mb,
        drop_failing=synth.drop_failing,
        require_examples=synth.require_examples,
        allow_weak_sandbox=synth.allow_weak_sandbox,
    )


def _validate_batch(
    batch: pd.DataFrame, kind: str, checks: Checks, num_perm: int, ngram: int
) -> pd.DataFrame:
    """Ray Data UDF: one row per record with ``reason`` ("" = kept) and, if kept, ``_sig``."""
    out = []
    for rec in batch.to_dict("records"):
        if kind == "textbooks":
            v = validate_textbook(rec["text"], None, checks)
            text = v["content"]
        else:
            v = validate_exercise(rec["text"], rec["func_name"], None, checks)
            text = v["prompt"] + v["completion"]
        row = {**rec, **v, "n_examples": int(v.get("n_examples", 0))}
        row.pop("text", None)
        row["id"] = hashlib.sha256(text.encode()).hexdigest()
        # Dropped rows get an empty signature (not None): one Arrow type for the column.
        sig = dedup.signature(text, num_perm, ngram) if not v["reason"] else None
        row["_sig"] = sig if sig is not None else np.zeros(0, np.uint64)
        out.append(row)
    return pd.DataFrame(out)


def validate_records(records: list[dict[str, Any]], kind: str, synth: Any) -> list[dict[str, Any]]:
    """Validate generated records; rows come back in sample order.

    Up to ``synth.local_max`` records run on driver threads (each check is a subprocess,
    so threads overlap them), which spares a small run Ray Data's start-up; larger sets
    are spread over the cluster with Ray Data.
    """
    if not records:
        return []
    kwargs = {
        "kind": kind,
        "checks": checks_from(synth),
        "num_perm": synth.dedup_num_perm,
        "ngram": synth.dedup_ngram,
    }
    if len(records) <= synth.local_max:
        bs = synth.batch_size
        batches = [pd.DataFrame(records[i : i + bs]) for i in range(0, len(records), bs)]
        with ThreadPoolExecutor(max(1, min(len(batches), os.cpu_count() or 1))) as pool:
            frames = list(pool.map(lambda b: _validate_batch(b, **kwargs), batches))
        rows = pd.concat(frames, ignore_index=True).to_dict("records")
    else:
        import ray

        ds = ray.data.from_items(records).map_batches(
            _validate_batch, fn_kwargs=kwargs, batch_size=synth.batch_size, batch_format="pandas"
        )
        rows = ds.take_all()
    return sorted(rows, key=lambda r: r["sample_index"])


def remove_duplicates(
    rows: list[dict[str, Any]], threshold: float, num_perm: int
) -> tuple[list[dict[str, Any]], Counter]:
    """Drop exact (same id) then near duplicates, keeping the earliest row of each group."""
    drops: Counter = Counter()
    seen: set[str] = set()
    unique = []
    for r in rows:
        if r["id"] in seen:
            drops["exact_duplicate"] += 1
            continue
        seen.add(r["id"])
        unique.append(r)
    sigs = [(r["id"], np.asarray(r["_sig"], dtype=np.uint64)) for r in unique]
    dups = dedup.near_duplicates(sigs, threshold, num_perm)
    drops["near_duplicate"] += len(dups)
    return [r for r in unique if r["id"] not in dups], drops


def to_frame(rows: list[dict[str, Any]], kind: str) -> pd.DataFrame:
    """The output table of ``kind`` with the contract's columns first (fixed dtypes)."""
    cols = TEXTBOOK_COLUMNS if kind == "textbooks" else EXERCISE_COLUMNS
    df = pd.DataFrame(rows, columns=cols)
    df["kind"] = "textbook" if kind == "textbooks" else "exercise"
    for c in ("tokens", "prompt_tokens", "completion_tokens", "n_examples", "sample_index"):
        df[c] = df[c].fillna(0).astype("int64")
    df["cost_usd"] = df["cost_usd"].fillna(0.0).astype("float64")
    for c in cols:
        if df[c].dtype == object or str(df[c].dtype).startswith(("str", "string")):
            df[c] = df[c].fillna("").astype(str)
    return df


def schema(kind: str) -> pa.Schema:
    cols = TEXTBOOK_COLUMNS if kind == "textbooks" else EXERCISE_COLUMNS
    types = {c: pa.int64() if c in _INT else pa.string() for c in cols}
    types["cost_usd"] = pa.float64()
    return pa.schema([(c, types[c]) for c in cols])


def write_rows(
    run: RunDir, out_dir: str, kind: str, rows: list[dict[str, Any]], per_file: int
) -> int:
    """Write ``rows`` as Parquet files under ``out_dir/kind`` (one empty file if none)."""
    d = run._fs_path(f"{out_dir}/{kind}")
    run.fs.create_dir(d, recursive=True)
    df = to_frame(rows, kind)
    table_schema = schema(kind)
    for i, start in enumerate(range(0, max(len(df), 1), per_file)):
        part = df.iloc[start : start + per_file]
        table = pa.Table.from_pandas(part, schema=table_schema, preserve_index=False)
        pq.write_table(table, f"{d}/part-{i:05d}.parquet", filesystem=run.fs)
    return len(df)


def dedup_and_cap(rows: list[dict], s: Any, kind: str, drops: Counter) -> list[dict]:
    """Near-duplicate removal, then the configured cap of ``kind``; both counted in ``drops``."""
    rows, dd = remove_duplicates(rows, s.near_dup_threshold, s.dedup_num_perm)
    drops.update(dd)
    cap = s.n_textbooks if kind == "textbooks" else s.n_exercises
    if len(rows) > cap:
        drops["over_limit"] += len(rows) - cap
        rows = rows[:cap]
    return rows
