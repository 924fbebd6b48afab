"""The score stage: every corpus file gets P(educational); the kept ones form ``filtered/``.

Restartable at the output-file level. Corpus file ``i`` is input shard ``i``; its scores
are written, once all its rows are scored, to ``.work/score/<hash>/shard-0000i.parquet``
(temporary name, then rename), so a crash loses at most the shards in flight. A rerun
skips finished shards and streams only the others through Ray Data:

    read_parquet(id, content) -> tokenize (CPU tasks) -> ScoreActor pool -> driver

The driver receives only (id, quality, kept) rows, in input order (``preserve_order``),
so at most the shards in flight are buffered: memory is bounded by shard size, not by
the corpus. When every shard is finished, one Ray task per shard joins it with its corpus
file (on id and the id's occurrence number, so a corpus without exact dedup, where ids
repeat, gets one score per row) and writes ``scored/part-0000i.parquet`` (id, quality, kept) and
``filtered/part-0000i.parquet`` (the corpus columns of kept rows + quality).

Empty input: a corpus file with no rows gives empty parts (with the schema); a corpus
with no files gives empty ``scored/`` and ``filtered/`` directories. Files longer than
the embedder's ``max_length`` are scored on their first ``max_length`` tokens.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from phi_ray.config import Config, EmbedderConfig
from phi_ray.quality import data
from phi_ray.runs import RunDir, StageResult, resolve_fs
from phi_ray.runtime import init_ray

log = logging.getLogger(__name__)
CORPUS_NEEDS = ("id", "content", "n_tokens")
SCORE_SCHEMA = pa.schema([("id", pa.string()), ("quality", pa.float32()), ("kept", pa.bool_())])
_SHARD_SCHEMA = SCORE_SCHEMA.append(pa.field("n_embedded", pa.int64()))


def stage_hash(cfg: Config, run: RunDir) -> str:
    return run.config_hash(cfg, ("quality",), upstream=("ingest", "classify"))


def run(cfg: Config, run: RunDir) -> StageResult:
    """Score the whole corpus with the trained classifier; see the module docstring."""
    init_ray(cfg)
    h = stage_hash(cfg, run)
    with run.stage("score", h) as out:
        if out.skipped:
            return out.result
        run.require("ingest", needed_by="score")
        run.require("classify", needed_by="score")
        files = data.list_parquet(run.path("ingest", "corpus"), "ingest corpus")
        for f in files[:1]:
            data.check_columns(f, CORPUS_NEEDS, "ingest corpus")
        shards = f"{run.work_path('score')}/shards-{h}"
        resolve_fs(shards)[0].create_dir(resolve_fs(shards)[1], recursive=True)
        stats = score_shards(cfg, files, run.path("classify", "classifier"), shards)
        counts = assemble(files, shards, out.tmp)
        counts |= stats
        counts["dropped"] = {"low_quality": counts["rows_in"] - counts["rows_out"]}
        result = out.finish(counts=counts, shards_dir=shards)
    fs, p = resolve_fs(shards)
    fs.delete_dir(p)  # the stage is committed; its scratch is no longer needed
    return result


def shard_path(shards_dir: str, i: int) -> str:
    """Input shard ``i`` is corpus file ``i`` (sorted); its finished scores live here."""
    return f"{shards_dir}/shard-{i:05d}.parquet"


def write_atomic(table: pa.Table, path: str) -> None:
    """Write a Parquet file under a temporary name, then rename (objects stores: one put)."""
    fs, p = resolve_fs(path)
    if "://" in path:
        pq.write_table(table, p, filesystem=fs)
        return
    tmp = f"{os.path.dirname(p)}/.{os.path.basename(p)}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, tmp)
    os.replace(tmp, p)


def score_shards(cfg: Config, files: list[str], clf_dir: str, shards_dir: str) -> dict[str, Any]:
    """Score every corpus file lacking a finished shard; returns this pass's counts."""
    expected = [data.parquet_rows(f) for f in files]
    finished = {f.rsplit("/", 1)[-1] for f in data.list_parquet(shards_dir, "score shards")}
    done = [i for i in range(len(files)) if f"shard-{i:05d}.parquet" in finished]
    pending = sorted(set(range(len(files))) - set(done))
    for i in [i for i in pending if expected[i] == 0]:
        write_atomic(_SHARD_SCHEMA.empty_table(), shard_path(shards_dir, i))
    pending = [i for i in pending if expected[i] > 0]
    stats = {"shards_total": len(files), "shards_reused": len(done), "shards_scored": 0}
    stats |= {"rows_scored": 0, "tokens_embedded": 0, "score_seconds": 0.0}
    if not pending:
        return stats
    if done:
        log.info("score: %d of %d shards already finished; resuming", len(done), len(files))
    t0 = time.perf_counter()
    ds = _pipeline(cfg, [files[i] for i in pending], clf_dir)
    by_name = {files[i]: i for i in pending}
    buffers: dict[int, list[pa.Table]] = defaultdict(list)
    got: dict[int, int] = defaultdict(int)
    bar = tqdm(total=sum(expected[i] for i in pending), desc="score", unit="file")
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for name in pc.unique(batch["file"]).to_pylist():
            i = by_name[name]
            part = batch.filter(pc.equal(batch["file"], name)).select(_SHARD_SCHEMA.names)
            buffers[i].append(part.cast(_SHARD_SCHEMA))
            got[i] += part.num_rows
            if got[i] > expected[i]:
                raise RuntimeError(f"score: {files[i]} gave {got[i]} rows, expected {expected[i]}")
            if got[i] == expected[i]:
                shard = pa.concat_tables(buffers.pop(i))
                write_atomic(shard, shard_path(shards_dir, i))
                stats["shards_scored"] += 1
                stats["tokens_embedded"] += int(pc.sum(shard["n_embedded"]).as_py() or 0)
            bar.update(part.num_rows)
    bar.close()
    short = [files[i] for i in pending if got[i] != expected[i]]
    if short:
        raise RuntimeError(f"score: rows missing from the scoring pass for {short[:5]}")
    stats["rows_scored"] = sum(expected[i] for i in pending)
    stats["score_seconds"] = round(time.perf_counter() - t0, 3)
    return stats


def _trained_embedder(clf_dir: str) -> EmbedderConfig:
    from phi_ray.quality.classifier import META_FILE, _read_bytes

    meta = json.loads(_read_bytes(f"{clf_dir}/{META_FILE}"))
    return EmbedderConfig(**meta["embedder_config"])


def _pipeline(cfg: Config, files: list[str], clf_dir: str) -> Any:
    """files -> read -> tokenize (CPU tasks) -> ScoreActor pool -> (file, id, quality, kept)."""
    q = cfg.quality
    ds = data.corpus_dataset(files, q.batch_rows)
    # Rows must reach the driver in file order so that shards finish one after another.
    ds.context.execution_options.preserve_order = True
    ds = ds.map_batches(
        data.tokenize_batch,
        # Tokenize as the classifier's embedder does (its meta, not this run's config).
        fn_kwargs={"embedder": _trained_embedder(clf_dir)},
        batch_format="pyarrow",
        batch_size=None,  # per reader block (<= batch_rows rows of one file); see data.py
    )
    return ds.map_batches(
        data.ScoreActor,
        fn_constructor_kwargs={
            "classifier_dir": clf_dir,
            "num_gpus": q.num_gpus,
            "num_cpus": q.num_cpus,
        },
        **data.actor_args(q),
    )


def assemble(files: list[str], shards_dir: str, out_dir: str) -> dict[str, Any]:
    """Join each finished shard with its corpus file into ``scored/`` and ``filtered/``."""
    import ray

    for sub in ("scored", "filtered"):
        fs, p = resolve_fs(f"{out_dir}/{sub}")
        fs.create_dir(p, recursive=True)
    task = ray.remote(num_cpus=1)(_assemble_one)
    refs = [
        task.remote(f, shard_path(shards_dir, i), f"{out_dir}/scored/part-{i:05d}.parquet",
                    f"{out_dir}/filtered/part-{i:05d}.parquet")
        for i, f in enumerate(files)
    ]  # fmt: skip
    totals: dict[str, Any] = defaultdict(int)
    totals["files_in"] = totals["files_out"] = len(files)  # one scored/ + filtered/ part each
    for ref in tqdm(refs, desc="assemble", unit="shard", disable=len(refs) < 2):
        for k, v in ray.get(ref).items():
            totals[k] += v
    totals["keep_rate"] = (
        round(totals["rows_out"] / totals["rows_in"], 6) if totals["rows_in"] else 0.0
    )
    return dict(totals)


def _assemble_one(corpus_file: str, shard_file: str, scored: str, filtered: str) -> dict[str, int]:
    fs, p = resolve_fs(corpus_file)
    corpus = pq.read_table(p, filesystem=fs)
    sfs, sp = resolve_fs(shard_file)
    scores = pq.read_table(sp, filesystem=sfs).select(SCORE_SCHEMA.names)
    id_type = corpus.schema.field("id").type  # string or large_string: join keys must match
    scores = scores.set_column(0, "id", scores["id"].cast(id_type))
    # Join on (id, its occurrence number): without exact dedup an id can repeat, and a join
    # on id alone would pair every copy with every score (n^2 rows). The k-th copy in the
    # shard (rows arrive in file order) is the k-th in the file. Then restore the corpus's
    # row order (Arrow joins do not keep it).
    corpus = corpus.append_column("_row", pa.array(range(corpus.num_rows), type=pa.int64()))
    corpus = corpus.append_column("_occ", _occurrence(corpus["id"]))
    scores = scores.append_column("_occ", _occurrence(scores["id"]))
    joined = corpus.join(scores, ["id", "_occ"], join_type="inner").sort_by("_row")
    joined = joined.drop_columns(["_row", "_occ"])
    if not (joined.num_rows == corpus.num_rows == scores.num_rows):
        raise RuntimeError(
            f"score: {shard_file} has {scores.num_rows} scores for {corpus.num_rows} rows of "
            f"{corpus_file} ({joined.num_rows} matched); delete it and rerun"
        )
    kept = joined.filter(joined["kept"])
    write_atomic(joined.select(SCORE_SCHEMA.names), scored)
    write_atomic(kept.drop_columns(["kept"]), filtered)
    return {
        "rows_in": corpus.num_rows,
        "tokens_in": int(pc.sum(corpus["n_tokens"]).as_py() or 0),
        "rows_out": kept.num_rows,
        "tokens_out": int(pc.sum(kept["n_tokens"]).as_py() or 0),
    }


def _occurrence(ids: pa.ChunkedArray) -> pa.Array:
    """0 for an id's first row, 1 for its second, ... (in row order)."""
    col = ids.to_pandas()
    return pa.array(col.groupby(col).cumcount().to_numpy(), pa.int64())
