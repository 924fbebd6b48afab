"""The synth stage: textbooks and exercises from an LLM, or exercises mined offline.

``synth.source``: ``llm`` generates both kinds through :mod:`phi_ray.llm`; ``mined`` takes
exercises from ``score/filtered/`` and skips textbooks (they need an LLM); ``auto`` is
``llm`` when ``llm.base_url`` is set, else ``mined``. Outputs (``runs/<run>/synth/``):
``textbooks/*.parquet``, ``exercises/*.parquet`` and ``diversity.json``; every drop is
counted per reason in ``_SUCCESS.json``, with tokens and dollars spent.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from phi_ray.config import Config
from phi_ray.runs import RunDir, StageResult
from phi_ray.runtime import init_ray
from phi_ray.synth import diversity, postprocess
from phi_ray.synth.mine import mine_exercises
from phi_ray.synth.topics import TopicTree

log = logging.getLogger("phi_ray.synth")
STAGE = "synth"
KINDS = ("textbooks", "exercises")
_INT = {"tokens", "prompt_tokens", "completion_tokens", "n_examples", "sample_index"}


def resolve_source(cfg: Config) -> str:
    """``llm`` or ``mined``; a clear error when ``llm`` is asked for without an endpoint."""
    src = cfg.synth.source
    if src == "auto":
        return "llm" if cfg.llm.base_url else "mined"
    if src == "llm" and not cfg.llm.base_url:
        raise ValueError(
            "synth.source=llm needs llm.base_url (an OpenAI-compatible endpoint); "
            "set it, or use synth.source=mined to mine exercises offline"
        )
    return src


def _schema(kind: str) -> pa.Schema:
    cols = postprocess.TEXTBOOK_COLUMNS if kind == "textbooks" else postprocess.EXERCISE_COLUMNS
    types = {c: pa.int64() if c in _INT else pa.string() for c in cols}
    types["cost_usd"] = pa.float64()
    return pa.schema([(c, types[c]) for c in cols])


def _write(run: RunDir, out_dir: str, kind: str, rows: list[dict[str, Any]], per_file: int) -> int:
    """Write ``rows`` as Parquet files under ``out_dir/kind`` (one empty file if none)."""
    d = run._fs_path(f"{out_dir}/{kind}")
    run.fs.create_dir(d, recursive=True)
    df = postprocess.to_frame(rows, kind)
    schema = _schema(kind)
    for i, start in enumerate(range(0, max(len(df), 1), per_file)):
        part = df.iloc[start : start + per_file]
        table = pa.Table.from_pandas(part, schema=schema, preserve_index=False)
        pq.write_table(table, f"{d}/part-{i:05d}.parquet", filesystem=run.fs)
    return len(df)


def _carry_over(run: RunDir, out_dir: str, kind: str) -> bool:
    """Copy ``kind`` from the previous complete synth output (``phi-ray synth textbooks``
    then ``phi-ray synth exercises`` keeps both)."""
    if run.read_success(STAGE) is None:
        return False
    src = run._fs_path(run.path(STAGE, kind))
    if run.fs.get_file_info(src).type != pafs.FileType.Directory:
        return False
    pafs.copy_files(src, run._fs_path(f"{out_dir}/{kind}"), run.fs, run.fs)
    return True


def _read_json(run: RunDir, path: str) -> dict[str, Any] | None:
    try:
        with run.fs.open_input_stream(run._fs_path(path)) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def _shard_schema(kind: str) -> pa.Schema:
    return _schema(kind).append(pa.field("_sig", pa.list_(pa.uint64())))


def _llm_kind(cfg: Config, run: RunDir, kind: str, tree: TopicTree, client: Any, h: str):
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
            table = pa.Table.from_pandas(df, schema=_shard_schema(kind), preserve_index=False)
            pq.write_table(table, run._fs_path(f"{base}.parquet"), filesystem=run.fs)
            run.write_json(f"{base}.json", meta)  # written last: the chunk's commit marker
        drops.update(meta["drops"])
        spend.update(meta["spend"])
        spend["generated"] += meta["generated"]
        shards.append(f"{base}.parquet")
    return shards, drops, spend


def _finish_shards(
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
    unique, dd = postprocess.remove_duplicates(ids, s.near_dup_threshold, s.dedup_num_perm)
    drops.update(dd)
    cap = s.n_textbooks if kind == "textbooks" else s.n_exercises
    if len(unique) > cap:
        drops["over_limit"] += len(unique) - cap
        unique = unique[:cap]
    keep = {r["sample_index"] for r in unique}  # sample indices: unique per row, unlike ids
    sample = set(
        random.Random(cfg.run.seed).sample(sorted(keep), min(len(keep), s.diversity_max_rows))
    )
    d = run._fs_path(f"{out_dir}/{kind}")
    run.fs.create_dir(d, recursive=True)
    schema, measured, buf, n_files, n = _schema(kind), [], [], 0, 0

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
        _write(run, out_dir, kind, [], s.rows_per_file)
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


def _finish_kind(cfg: Config, kind: str, kept: list[dict[str, Any]], drops: Counter, tree):
    """Dedup, cap (mined only) and measure one kind; returns rows and its diversity report."""
    s = cfg.synth
    kept, dd = postprocess.remove_duplicates(kept, s.near_dup_threshold, s.dedup_num_perm)
    drops.update(dd)
    cap = s.n_textbooks if kind == "textbooks" else s.n_exercises
    if len(kept) > cap:
        drops["over_limit"] += len(kept) - cap
        kept = kept[:cap]
    texts = [r["content"] if kind == "textbooks" else r["prompt"] + r["completion"] for r in kept]
    report = diversity.report(
        texts,
        s.near_dup_threshold,
        rows=kept if tree is not None else None,
        tree=tree,
        max_rows=s.diversity_max_rows,
        seed=cfg.run.seed,
    )
    if tree is None:
        report["distinct_topics"] = len({r["topic"] for r in kept})
    return kept, report


def run(cfg: Config, run: RunDir) -> StageResult:
    """Build ``synth/``: see the module docstring."""
    init_ray(cfg)
    source = resolve_source(cfg)
    mining = source == "mined" and "exercises" in cfg.synth.kinds
    h = run.config_hash(
        cfg, ("synth", "llm") if source == "llm" else ("synth",), ("score",) if mining else ()
    )
    with run.stage(STAGE, h) as out:
        if out.skipped:
            return out.result
        filtered = run.require("score", needed_by="synth (mined exercises)") if mining else None
        tree = TopicTree.load(cfg.synth.topic_tree) if source == "llm" else None
        client = None
        if source == "llm":
            from phi_ray.llm import LLMClient

            client = LLMClient(cfg.llm, run.work_path(STAGE), model=cfg.synth.model)
        counts: dict[str, Any] = {}
        extra: dict[str, Any] = {"source": source, "skipped_kinds": {}, "drops": {}, "spend": {}}
        reports: dict[str, Any] = {}
        try:
            for kind in KINDS:
                if kind not in cfg.synth.kinds:
                    carried = _carry_over(run, out.tmp, kind)
                    why = "not requested (synth.kinds)" + ("; carried over" if carried else "")
                    extra["skipped_kinds"][kind] = why
                    if not carried:
                        _write(run, out.tmp, kind, [], cfg.synth.rows_per_file)
                    continue
                if source == "mined" and kind == "textbooks":
                    why = (
                        "no LLM configured (llm.base_url is null or synth.source=mined): "
                        "textbooks need one; set llm.base_url to generate them"
                    )
                    log.warning("synth: textbooks skipped: %s", why)
                    extra["skipped_kinds"][kind] = why
                    counts["textbooks_skipped"] = 1
                    _write(run, out.tmp, kind, [], cfg.synth.rows_per_file)
                    continue
                if source == "llm":
                    shards, drops, spend = _llm_kind(cfg, run, kind, tree, client, h)
                    n, reports[kind] = _finish_shards(cfg, run, kind, shards, drops, tree, out.tmp)
                else:
                    kept, drops, spend = mine_exercises(cfg, filtered)
                    kept, reports[kind] = _finish_kind(cfg, kind, kept, drops, tree)
                    n = _write(run, out.tmp, kind, kept, cfg.synth.rows_per_file)
                counts[f"{kind}_generated"] = spend.get("generated", 0)
                counts[f"{kind}_kept"] = n
                counts.update({f"{kind}_drop_{k}": v for k, v in sorted(drops.items())})
                extra["drops"][kind] = dict(drops)
                extra["spend"][kind] = {k: v for k, v in spend.items() if k != "generated"}
                log.info(
                    "synth %s: kept %d of %d; drops %s",
                    kind,
                    n,
                    spend.get("generated", 0),
                    dict(drops),
                )
        finally:
            if client is not None:
                client.close()
        spend_all = Counter()
        for sp in extra["spend"].values():
            spend_all.update(sp)
        extra["cost_usd"] = round(spend_all.get("cost_usd", 0.0), 6)
        extra["cost_usd_this_run"] = round(spend_all.get("cost_usd_this_run", 0.0), 6)
        extra["tokens"] = int(
            spend_all.get("prompt_tokens", 0) + spend_all.get("completion_tokens", 0)
        )
        extra["model"] = client.model if client is not None else "mined"
        run.write_json(f"{out.tmp}/diversity.json", reports)
        extra["diversity"] = reports
        return out.finish(counts=counts, **extra)
