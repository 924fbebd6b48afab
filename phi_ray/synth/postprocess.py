"""Validation, near-duplicate removal, the cap and the output, on Ray Data.

Validation (which runs sandboxed subprocesses) and LSH band keys are computed batch by
batch. :func:`finish` takes a dataset read from storage and keeps it in Ray end to end:
ingest's distributed near-dedup (:func:`phi_ray.corpus.dedup.remove_near_duplicates`),
a cap by a threshold on a narrow key, and ``write_parquet``. The driver holds counts, the
uids of near-duplicates, and the bounded diversity sample only.
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

from phi_ray.corpus.minhash import band_keys, lsh_params, signature
from phi_ray.runs import RunDir
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


def bands_of(text: str, synth: Any) -> np.ndarray:
    """The LSH band keys of ``text`` under ``synth``'s dedup settings (ingest's MinHash)."""
    b, r = lsh_params(synth.near_dup_threshold, synth.dedup_num_perm)
    sig = signature(text, synth.dedup_num_perm, synth.dedup_ngram)
    return band_keys(sig[None, :], b, r)[0]


def _validate_batch(batch: pd.DataFrame, kind: str, checks: Checks, synth: Any) -> pd.DataFrame:
    """Ray Data UDF: one row per record with ``reason`` ("" = kept) and, if kept, ``bands``."""
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
        # Dropped rows get no band keys (not None): one Arrow type for the column.
        row["bands"] = bands_of(text, synth) if not v["reason"] else np.zeros(0, np.uint64)
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
    kwargs = {"kind": kind, "checks": checks_from(synth), "synth": synth}
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


def read_parquet(paths: str | list[str], **kwargs: Any) -> Any:
    """Ray Data read of files this stage (or score) wrote, with the V1 Parquet reader.

    The V2 reader starts a pool of footer-reading actors on every read, which on a loaded
    small machine costs minutes for our handful of files (ingest's ``read_work`` does
    the same).
    """
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, **kwargs)
    finally:
        ctx.use_datasource_v2 = before


def _partitions() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def smallest(ds: Any, key: str, n: int) -> Any:
    """The rows of ``ds`` with the ``n`` smallest values of the unique int column ``key``.

    Only the narrow key column is sorted; the threshold it yields filters the full rows,
    so no row content is shuffled or collected.
    """
    from ray.data.expressions import col, lit

    if n <= 0:
        return ds.limit(0)
    thr = ds.select_columns([key]).sort(key).limit(n).max(key)
    return ds.filter(expr=col(key) <= lit(int(thr)))


def _output_batch(batch: pd.DataFrame, kind: str, tokenize: bool) -> pa.Table:
    """Ray Data UDF: working rows -> the output schema (mined rows get token counts here)."""
    if tokenize and len(batch):
        from phi_ray.model.tokenizer import get_tokenizer

        texts = (batch["prompt"] + batch["completion"]).tolist()
        batch = batch.assign(tokens=[len(x) for x in get_tokenizer()(texts)["input_ids"]])
    return pa.Table.from_pandas(to_frame(batch, kind), schema=schema(kind), preserve_index=False)


def finish(
    run: RunDir, ds: Any, s: Any, kind: str, drops: Counter, out_dir: str, tokenize: bool = False
) -> tuple[int, list[dict[str, Any]], Any]:
    """Near-dedup, cap and write ``ds`` (working rows with ``uid`` = ``sample_index`` and
    ``bands``); returns (rows written, the diversity sample's rows, the written dataset).

    ``ds`` must be read from storage: the near-dedup executes it twice. Each group of
    near-duplicates keeps its smallest ``sample_index``; the cap keeps the smallest
    ``sample_index`` values; both are counted in ``drops``.
    """
    from phi_ray.corpus.dedup import remove_near_duplicates

    n_in = ds.count()
    if n_in == 0:
        write_rows(run, out_dir, kind, [], s.rows_per_file)
        return 0, [], None
    ds, n_near = remove_near_duplicates(ds, _partitions())
    drops["near_duplicate"] += n_near
    cap = s.n_textbooks if kind == "textbooks" else s.n_exercises
    if n_in - n_near > cap:
        drops["over_limit"] += n_in - n_near - cap
        ds = smallest(ds, "sample_index", cap)
    if min(cap, n_in - n_near) == 0:
        write_rows(run, out_dir, kind, [], s.rows_per_file)
        return 0, [], None
    path = f"{out_dir}/{kind}"
    ds.map_batches(
        _output_batch, batch_format="pandas", fn_kwargs={"kind": kind, "tokenize": tokenize}
    ).write_parquet(path, min_rows_per_file=s.rows_per_file, max_rows_per_file=s.rows_per_file)
    out = read_parquet(path)
    n = out.count()  # Parquet metadata
    # A set within diversity_max_rows is measured whole: no sort needed to pick a sample.
    some = out if n <= s.diversity_max_rows else smallest(out, "sample_index", s.diversity_max_rows)
    sample = some.take_all()
    sample.sort(key=lambda r: r["sample_index"])
    return n, sample, out
