"""LLM generation in crash-surviving chunks, then one distributed dedup-and-write pass.

Each chunk of ``synth.chunk_size`` prompts is generated on the driver's async client
(answers cached by the LLM layer), validated, and its kept rows (with LSH band keys)
written to a Parquet shard under ``.work/synth/<kind>-<config hash>/`` with its counts in
a JSON written last. A rerun skips finished chunks and regenerates the others from the
LLM cache. The final pass reads the shards with Ray Data and runs
:func:`phi_ray.synth.postprocess.finish` (ingest's near-dedup, cap, ``write_parquet``).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from phi_ray.config import Config
from phi_ray.runs import RunDir
from phi_ray.synth import diversity, postprocess
from phi_ray.synth.topics import TopicTree

STAGE = "synth"


def _read_json(run: RunDir, path: str) -> dict[str, Any] | None:
    try:
        with run.fs.open_input_stream(run._fs_path(path)) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def shard_schema(kind: str) -> pa.Schema:
    return (
        postprocess.schema(kind)
        .append(pa.field("uid", pa.int64()))
        .append(pa.field("bands", pa.list_(pa.uint64())))
    )


def generate_shards(cfg: Config, run: RunDir, kind: str, tree: TopicTree, client: Any, h: str):
    """Generate and validate one kind chunk by chunk into crash-surviving shards.

    Each chunk's kept rows (with their LSH band keys) go to a Parquet shard under
    ``.work/synth/<kind>-<config hash>/`` and its counts to a JSON written last; a rerun
    skips finished chunks entirely and regenerates the rest from the LLM cache.
    Returns (shard paths, drop reasons, spend).
    """
    from phi_ray.synth.generate import generate_chunk

    s = cfg.synth
    n = s.n_textbooks if kind == "textbooks" else s.n_exercises
    shard_dir = f"{run.work_path(STAGE)}/{kind}-{h}"
    run.fs.create_dir(run._fs_path(shard_dir), recursive=True)
    shards, drops, spend = [], Counter(), Counter()
    for start in range(0, n, s.chunk_size):
        stop = min(n, start + s.chunk_size)
        base = f"{shard_dir}/chunk-{start:09d}"
        meta = _read_json(run, f"{base}.json")
        if meta is not None:  # finished by an earlier attempt: nothing spent on it now
            meta["spend"] = {k: v for k, v in meta["spend"].items() if "_this_run" not in k}
            spend["chunks_reused"] += 1
        else:
            records, failures, stats = generate_chunk(
                client, tree, kind, start, stop, cfg.run.seed, s, client.model
            )
            meta = {"drops": Counter(failures), "spend": Counter(), "generated": 0}
            for k in ("prompt_tokens", "completion_tokens", "cost_usd", "api_calls", "cache_hits"):
                meta["spend"][f"{k}_this_run"] += stats.get(k, 0)
            for r in records:
                r.update(tokens=r["completion_tokens"], source="llm")
                for k in ("prompt_tokens", "completion_tokens", "cost_usd"):
                    meta["spend"][k] += r[k]
            rows = postprocess.validate_records(records, kind, s)
            meta["drops"].update(r["reason"] for r in rows if r["reason"])
            meta["generated"] = len(rows)
            kept = [r for r in rows if not r["reason"]]
            df = postprocess.to_frame(kept, kind)
            df["uid"] = df["sample_index"]  # unique per kind: near-dedup keeps the earliest
            df["bands"] = [r["bands"] for r in kept]
            table = pa.Table.from_pandas(df, schema=shard_schema(kind), preserve_index=False)
            pq.write_table(table, run._fs_path(f"{base}.parquet"), filesystem=run.fs)
            run.write_json(f"{base}.json", meta)  # written last: the chunk's commit marker
        drops.update(meta["drops"])
        spend.update(meta["spend"])
        spend["generated"] += meta["generated"]
        shards.append(f"{base}.parquet")
    return shards, drops, spend


def finish_shards(
    cfg: Config, run: RunDir, kind: str, shards: list[str], drops: Counter, tree, out_dir: str
):
    """Dedup across all shards, cap, write the output (all on Ray Data); measure a sample."""
    s = cfg.synth
    ds = postprocess.read_parquet(shards) if shards else None
    if ds is None:
        n, measured = postprocess.write_rows(run, out_dir, kind, [], s.rows_per_file), []
    else:
        n, measured, _ = postprocess.finish(run, ds, s, kind, drops, out_dir)
    texts = [
        r["content"] if kind == "textbooks" else r["prompt"] + r["completion"] for r in measured
    ]
    report = diversity.report(
        texts,
        s.near_dup_threshold,
        rows=measured,
        tree=tree,
        max_rows=s.diversity_max_rows,
        seed=cfg.run.seed,
    )
    report["rows"] = n
    return n, report
