"""Exercises mined from real code: the offline source when no LLM is configured.

Every top-level function with a docstring in ``score/filtered/`` becomes one exercise:
prompt = decorators + signature + docstring, completion = the body, cut with ``ast`` at the
docstring's last line over the exact source lines (so ``prompt + completion`` is the
function exactly as written). Stubs, dunders and oversized functions are dropped, counted.

Mining runs on Ray Data and writes its rows (with LSH band keys) under ``.work/synth/``;
nothing but per-batch drop counts comes back to the driver.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from phi_ray.corpus.minhash import band_key_lists, lsh_params
from phi_ray.synth import parse

_COLUMNS = ("id", "prompt", "completion", "func_name", "topic", "source_id", "prompt_hash")
# Provenance of mined rows: no model, no cost (token counts are added at output).
_CONSTANT = dict(
    kind="exercise", model="mined", source="mined", audience="", subtopic="", category="mined",
    tokens=0, cost_usd=0.0, prompt_tokens=0, completion_tokens=0, tests_status="not_run",
    n_examples=0,
)  # fmt: skip


def row_uid(source_id: str, position: int, text: str) -> int:
    """A deterministic, non-negative int64 per mined row (file, position, text).

    It is both the row's ``sample_index`` and its near-dedup uid: the smallest of a group
    of near-duplicates is kept, and the ``n_exercises`` cap keeps the smallest, a
    pseudo-random spread across files rather than the first files.
    """
    d = hashlib.sha256(f"{source_id}:{position}:{text}".encode()).digest()
    return int.from_bytes(d[:8], "big") >> 1


def module_topic(path: str) -> str:
    """A readable topic for a mined row: the module path without suffix (``json/decoder``)."""
    p = (path or "").replace("\\", "/")
    for marker in ("/lib/python3", "/site-packages/"):
        if marker in p:
            p = p.split(marker, 1)[1]
            p = p.split("/", 1)[1] if marker.startswith("/lib") and "/" in p else p
    return p.removesuffix(".py").removesuffix("/__init__") or "unknown"


def mine_source(
    content: str, min_chars: int = 80, max_chars: int = 6000
) -> tuple[list[parse.Split], Counter]:
    """The exercises of one file and the drop reasons of its other candidate functions."""
    drops: Counter = Counter()
    try:
        tree = ast.parse(content)
    except parse.PARSE_ERRORS:  # deep nesting raises RecursionError/MemoryError too
        drops["file_syntax_error"] += 1
        return [], drops
    lines = parse.source_lines(content)
    out = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name.startswith("__") and node.name.endswith("__"):
            drops["dunder"] += 1
            continue
        split, reason = parse.split_function(content, node, lines, preamble=False)
        if split is None:
            drops[reason] += 1
            continue
        size = len(split.prompt) + len(split.completion)
        if size < min_chars:
            drops["too_short"] += 1
        elif size > max_chars:
            drops["too_long"] += 1
        else:
            out.append(split)
    return out, drops


def mine_batch(
    batch: pd.DataFrame, min_chars: int, max_chars: int, num_perm: int, ngram: int, threshold: float
) -> pa.Table:
    """Ray Data UDF: filtered files -> exercise rows (+ one ``_drops`` row of counts)."""
    rows: list[dict[str, Any]] = []
    drops: Counter = Counter()
    for content, path, fid in zip(batch["content"], batch["path"], batch["id"], strict=True):
        splits, d = mine_source(content, min_chars, max_chars)
        drops.update(d)
        for k, s in enumerate(splits):
            text = s.prompt + s.completion
            uid = row_uid(fid, k, text)
            rows.append(
                {
                    "id": hashlib.sha256(text.encode()).hexdigest(),
                    "prompt": s.prompt,
                    "completion": s.completion,
                    "func_name": s.func_name,
                    "topic": module_topic(path),
                    "source_id": fid,
                    "prompt_hash": hashlib.sha256(s.prompt.encode()).hexdigest(),
                    **_CONSTANT,
                    "sample_index": uid,
                    "uid": uid,
                    "_drops": "",
                }
            )
    b, r = lsh_params(threshold, num_perm)
    bands = band_key_lists([x["prompt"] + x["completion"] for x in rows], num_perm, ngram, b, r)
    # Drop counts travel as one extra row (id "") so they survive the distributed map;
    # it has every column, so all batches share one schema.
    counts = ",".join(f"{k}={v}" for k, v in drops.items())
    rows.append({**dict.fromkeys(_COLUMNS, ""), **_CONSTANT, "sample_index": 0, "uid": 0,
                 "_drops": counts})  # fmt: skip
    # Band keys are uint64 (past int64): built as Arrow, never through pandas ints.
    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    empty = pa.array([[]], type=pa.list_(pa.uint64()))
    return table.append_column("bands", pa.concat_arrays([bands, empty]))


def mine_exercises(cfg: Any, run: Any, filtered_stage: str, h: str) -> tuple[Any, Counter, Counter]:
    """Mine every file of ``<score>/filtered/`` on Ray Data: (dataset, drops, spend).

    The rows are written under ``.work/synth/mined-<config hash>/`` and returned as a
    dataset read back from there (the near-dedup reads its input twice).
    """
    from ray.data.expressions import col, lit

    from phi_ray.synth.postprocess import read_parquet

    s = cfg.synth
    kwargs = {
        "min_chars": s.min_exercise_chars,
        "max_chars": s.mine_max_chars,
        "num_perm": s.dedup_num_perm,
        "ngram": s.dedup_ngram,
        "threshold": s.near_dup_threshold,
    }
    work = f"{run.work_path('synth')}/mined-{h}"
    fs_work = run._fs_path(work)
    if run.fs.get_file_info(fs_work).type != pafs.FileType.NotFound:
        run.fs.delete_dir(fs_work)  # a crashed attempt's files would be read twice
    files = read_parquet(f"{filtered_stage}/filtered", columns=["id", "content", "path"])
    files.map_batches(
        mine_batch, fn_kwargs=kwargs, batch_size=64, batch_format="pandas"
    ).write_parquet(work)
    ds = read_parquet(work)
    drops: Counter = Counter()
    # One small row per mining batch: its drop counts.
    for r in ds.filter(expr=col("id") == lit("")).select_columns(["_drops"]).iter_rows():
        for kv in filter(None, (r["_drops"] or "").split(",")):
            k, v = kv.rsplit("=", 1)
            drops[k] += int(v)
    rows = ds.filter(expr=col("id") != lit("")).drop_columns(["_drops"])
    n = rows.count()
    return rows, drops, Counter(generated=n + sum(drops.values()))
