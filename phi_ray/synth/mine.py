"""Exercises mined from real code: the offline source when no LLM is configured.

Every top-level function with a docstring in ``score/filtered/`` becomes one exercise:
prompt = decorators + signature + docstring, completion = the body, cut with ``ast`` at the
docstring's last line over the exact source lines (so ``prompt + completion`` is the
function exactly as written). Stubs, dunders and oversized functions are dropped, counted.
"""

from __future__ import annotations

import ast
import hashlib
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from phi_ray.synth import parse
from phi_ray.synth.dedup import signature

_COLUMNS = ("id", "prompt", "completion", "func_name", "topic", "source_id", "prompt_hash")


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
    except (SyntaxError, ValueError):
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
    batch: pd.DataFrame, min_chars: int, max_chars: int, num_perm: int, ngram: int
) -> pd.DataFrame:
    """Ray Data UDF: filtered files -> exercise rows (+ one ``_drops`` row of counts)."""
    rows: list[dict[str, Any]] = []
    drops: Counter = Counter()
    for content, path, fid in zip(batch["content"], batch["path"], batch["id"], strict=True):
        splits, d = mine_source(content, min_chars, max_chars)
        drops.update(d)
        for s in splits:
            text = s.prompt + s.completion
            rows.append(
                {
                    "id": hashlib.sha256(text.encode()).hexdigest(),
                    "prompt": s.prompt,
                    "completion": s.completion,
                    "func_name": s.func_name,
                    "topic": module_topic(path),
                    "source_id": fid,
                    "prompt_hash": hashlib.sha256(s.prompt.encode()).hexdigest(),
                    "_sig": signature(text, num_perm, ngram),
                    "_drops": "",
                }
            )
    # Drop counts travel as one extra row (id "") so they survive the distributed map;
    # it has every column, so all batches share one schema.
    counts = ",".join(f"{k}={v}" for k, v in drops.items())
    rows.append({**dict.fromkeys(_COLUMNS, ""), "_sig": np.zeros(0, np.uint64), "_drops": counts})
    return pd.DataFrame(rows, columns=[*_COLUMNS, "_sig", "_drops"])


def mine_exercises(cfg: Any, filtered_stage: str) -> tuple[list[dict[str, Any]], Counter, Counter]:
    """Mine every file of ``<score>/filtered/``: (rows, drop reasons, spend).

    More than ``synth.local_max`` files are mined on Ray Data across the cluster.

    Rows come back ordered by id (a content hash): a deterministic order that spreads a
    later ``n_exercises`` cap across files rather than taking the first ones.
    """
    s = cfg.synth
    kwargs = {
        "min_chars": s.min_exercise_chars,
        "max_chars": s.mine_max_chars,
        "num_perm": s.dedup_num_perm,
        "ngram": s.dedup_ngram,
    }
    path, cols = f"{filtered_stage}/filtered", ["id", "content", "path"]
    dataset = pq.ParquetDataset(path)
    n_files = sum(f.metadata.num_rows for f in dataset.fragments)
    if n_files <= s.local_max:
        # A few hundred files: mining on the driver beats Ray Data's start-up.
        table = dataset.read(columns=cols)
        batches = [mine_batch(b.to_pandas(), **kwargs) for b in table.to_batches(64)]
        out = pd.concat(batches, ignore_index=True).to_dict("records") if batches else []
    else:
        import ray

        ds = ray.data.read_parquet(path, columns=cols).map_batches(
            mine_batch, fn_kwargs=kwargs, batch_size=64, batch_format="pandas"
        )
        out = ds.take_all()
    drops: Counter = Counter()
    rows = []
    for r in out:
        if not r["id"]:
            for kv in filter(None, (r["_drops"] or "").split(",")):
                k, v = kv.rsplit("=", 1)
                drops[k] += int(v)
            continue
        rows.append(r)
    rows.sort(key=lambda r: r["id"])
    _annotate(rows)
    return rows, drops, Counter(generated=len(rows) + sum(drops.values()))


def _annotate(rows: list[dict[str, Any]]) -> None:
    """Provenance of mined rows: codegen token counts, no model, no cost."""
    from phi_ray.model.tokenizer import get_tokenizer

    tok = get_tokenizer()
    texts = [r["prompt"] + r["completion"] for r in rows]
    lens = [len(ids) for ids in tok(texts)["input_ids"]] if texts else []
    for i, (r, n) in enumerate(zip(rows, lens, strict=True)):
        r.update(
            kind="exercise", model="mined", source="mined", audience="", subtopic="",
            category="mined", tokens=n, cost_usd=0.0, prompt_tokens=0, completion_tokens=0,
            tests_status="not_run", n_examples=0, sample_index=i,
        )  # fmt: skip
