"""LLM generation in crash-surviving chunks, then one streaming dedup-and-write pass.

Each chunk of ``synth.chunk_size`` prompts is generated (answers cached by the LLM
layer), validated, and its kept rows (with MinHash signatures) written to a Parquet shard
under ``.work/synth/<kind>-<config hash>/`` with its counts in a JSON written last. A
rerun skips finished chunks and regenerates the others from the LLM cache. The final
pass holds only ids and signatures for the whole set and streams rows shard by shard.
"""

from __future__ import annotations

import json
import random
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
    return postprocess.schema(kind).append(pa.field("_sig", pa.list_(pa.uint64())))


def generate_shards(cfg: Config, run: RunDir, kind: str, tree: TopicTree, client: Any, h: str):
    """Generate and validate one kind chunk by chunk into crash-surviving shards.

    Each chunk's kept rows (with their MinHash signatures) go to a Parquet shard under
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
            df["_sig"] = [r["_sig"] for r in kept]
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
    """Dedup across all shards, cap, write the output, and measure a sample of it.

    Only ids and signatures are held for the whole set; rows are streamed shard by shard.
    """
    s = cfg.synth
    read = lambda p, cols=None: pq.read_table(run._fs_path(p), columns=cols, filesystem=run.fs)  # noqa: E731
    ids: list[dict[str, Any]] = []
    for p in shards:
        t = read(p, ["id", "_sig", "sample_index"]).to_pydict()
        ids += [
            {"id": i, "_sig": g, "sample_index": k}
            for i, g, k in zip(t["id"], t["_sig"], t["sample_index"], strict=True)
        ]
    ids.sort(key=lambda r: r["sample_index"])
    unique = postprocess.dedup_and_cap(ids, s, kind, drops)
    keep = {r["sample_index"] for r in unique}  # sample indices: unique per row, unlike ids
    sample = set(
        random.Random(cfg.run.seed).sample(sorted(keep), min(len(keep), s.diversity_max_rows))
    )
    d = run._fs_path(f"{out_dir}/{kind}")
    run.fs.create_dir(d, recursive=True)
    schema, measured, buf, n_files, n = postprocess.schema(kind), [], [], 0, 0

    def flush(force: bool = False) -> None:
        nonlocal buf, n_files
        while buf and (force or len(buf) >= s.rows_per_file):
            part, buf = buf[: s.rows_per_file], buf[s.rows_per_file :]
            df = postprocess.to_frame(part, kind)
            table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
            pq.write_table(table, f"{d}/part-{n_files:05d}.parquet", filesystem=run.fs)
            n_files += 1

    seen: set[str] = set()
    for p in shards:
        for r in read(p).drop_columns(["_sig"]).to_pylist():
            if r["sample_index"] not in keep or r["id"] in seen:
                continue
            seen.add(r["id"])
            buf.append(r)
            n += 1
            if r["sample_index"] in sample:
                measured.append(r)
        flush()
    flush(force=True)
    if n_files == 0:
        postprocess.write_rows(run, out_dir, kind, [], s.rows_per_file)
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
