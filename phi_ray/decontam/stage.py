"""``phi-ray decontam``: prune training data that resembles HumanEval / MBPP.

For every configured dataset (``synth/exercises`` by default) and benchmark problem:

1. exact substring and n-gram overlap (:mod:`~phi_ray.decontam.ngram`);
2. the row's k nearest problems by embedding L2 distance (:mod:`~phi_ray.decontam.embed_nn`);
3. the AST match rate with each close neighbour (:mod:`~phi_ray.decontam.astmatch`).

Each dataset is one streaming Ray Data pass (read -> embed + k-NN on an actor pool, GPUs
when ``quality.num_gpus`` > 0 -> n-gram + AST tasks that also write the pruned copies), so
the data is read once for all τs. Outputs, under ``decontam/``::

    report.json               counts per τ and reason, timings per method, benchmark
                              status (loaded / skipped and why), and every removed row with
                              the task ids it matched, by which method and at which τs
    humaneval_split.json      {"similar": [...], "non_similar": [...]} at split_tau
    pruned/tau=<t>/           the exercises kept at each τ, every input column
                              (other datasets: pruned/<name>/tau=<t>/)
    exercises/                the exercises kept at use_tau, for the pack stage
    matches/<dataset>/        the match table: per row, tasks matched by each method

A crash leaves no partial output (the stage directory appears only when complete); a
rerun recomputes the pass, which is one read of the data and one embedding of each row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from phi_ray.config import Config
from phi_ray.decontam.benchmarks import BenchmarkError, Problem, load_benchmarks
from phi_ray.decontam.inputs import InputDataset, resolve
from phi_ray.decontam.match import MATCH_SCHEMA, Matcher
from phi_ray.decontam.sweep import (
    dataset_summary,
    humaneval_split,
    matched_rows,
    row_report,
    tau_name,
)
from phi_ray.runs import RunDir, StageResult, files_fingerprint
from phi_ray.runtime import init_ray

log = logging.getLogger("phi_ray.decontam")
STAGE = "decontam"


def config_hash(cfg: Config, run: RunDir) -> str:
    """decontam's section, the embedder it uses (and its seed), and the upstream stages."""
    upstream = tuple(dict.fromkeys(_stage_of(n) for n in cfg.decontam.datasets))
    # a local MBPP file is named by its path only: its edits must rerun decontam too
    base = run.config_hash(
        cfg, (STAGE,), upstream=upstream, inputs=files_fingerprint(cfg.decontam.mbpp_path)
    )
    extra = ""
    if cfg.decontam.candidates == "knn":
        extra = json.dumps(
            {"embedder": dataclasses.asdict(cfg.quality.embedder), "seed": cfg.run.seed},
            sort_keys=True,
        )
    return hashlib.sha256(f"{base}|{extra}".encode()).hexdigest()[:16]


def _stage_of(name: str) -> str:
    from phi_ray.decontam.inputs import ALIASES

    return ALIASES[name][0] if name in ALIASES else name.partition("/")[0]


def run(cfg: Config, run: RunDir) -> StageResult:
    """Decontaminate the configured datasets; see the module docstring for the outputs."""
    init_ray(cfg)
    dcfg = cfg.decontam
    with run.stage(STAGE, config_hash(cfg, run)) as out:
        if out.skipped:
            return out.result
        t0 = time.time()
        problems, bench_status = load_benchmarks(dcfg)
        if not problems:
            reasons = "; ".join(f"{k}: {v.get('reason')}" for k, v in bench_status.items())
            raise BenchmarkError(f"decontam: no benchmark could be loaded ({reasons})")
        inputs = [resolve(run, n) for n in dcfg.datasets]
        matcher = Matcher.build(problems, dcfg)
        tables = {d.name: _match_table(cfg, run, d, problems, matcher, out.tmp) for d in inputs}
        t_match = time.time() - t0

        report, counts = _sweep(cfg, problems, inputs, tables)
        report["benchmarks"] = bench_status
        report["wall_seconds"] = {"match": round(t_match, 3), "total": round(time.time() - t0, 3)}
        split = humaneval_split(report["removed"], problems, dcfg.split_tau or dcfg.use_tau)
        run.write_json(f"{out.tmp}/report.json", report)
        run.write_json(f"{out.tmp}/humaneval_split.json", split)
        counts["benchmarks_loaded"] = sum(s["status"] == "loaded" for s in bench_status.values())
        counts["benchmarks_skipped"] = sum(s["status"] == "skipped" for s in bench_status.values())
        counts["humaneval_similar"] = len(split["similar"])
        log.info("decontam: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return out.finish(counts=counts, use_tau=dcfg.use_tau, taus=sorted(dcfg.taus))


def _pruned_dirs(run: RunDir, tmp: str, d: InputDataset, taus: list[float], use_tau: float):
    """τ -> the directories its surviving rows go to (``pruned/tau=<t>``, the use_tau copy)."""
    base = f"{tmp}/pruned" if d.name == "exercises" else f"{tmp}/pruned/{d.name}"
    dirs = {t: [run._fs_path(f"{base}/{tau_name(t)}")] for t in taus}
    dirs[use_tau].append(run._fs_path(f"{tmp}/{d.name}"))
    return dirs


def _match_table(
    cfg: Config, run: RunDir, d: InputDataset, problems: list[Problem], matcher: Matcher, tmp: str
) -> pa.Table:
    """Run the dataset's Ray Data pass (match + pruned sets); return its match table."""
    import ray.data

    from phi_ray.decontam.embed_nn import EmbedNeighbors
    from phi_ray.decontam.match import PrunedSink, add_text, match_and_write

    dcfg, bs = cfg.decontam, cfg.decontam.batch_size
    dirs = _pruned_dirs(run, tmp, d, sorted(dcfg.taus), dcfg.use_tau)
    ds = ray.data.read_parquet(d.path)
    ds = ds.map_batches(
        add_text, fn_kwargs={"columns": d.text_columns}, batch_format="pyarrow", batch_size=bs
    )
    if dcfg.candidates == "knn":
        gpus = cfg.quality.num_gpus
        ds = ds.map_batches(
            EmbedNeighbors,
            fn_constructor_kwargs={
                "embedder_cfg": cfg.quality.embedder,
                "seed": cfg.run.seed,
                "bench_texts": [p.code for p in problems],
                "k": dcfg.k_neighbors,
                "l2_quantile": dcfg.l2_quantile,
                "l2_max": dcfg.l2_max,
                "embed_text": dcfg.embed_text,
                "use_gpu": gpus > 0,
            },
            compute=ray.data.ActorPoolStrategy(size=cfg.quality.concurrency),
            num_gpus=gpus or None,
            batch_format="pyarrow",
            batch_size=bs,
        )
    ds = ds.map_batches(
        match_and_write,
        fn_kwargs={"matcher": matcher, "sink": PrunedSink(run.fs, dirs)},
        batch_format="pyarrow",
        batch_size=bs,
    )
    matches = f"{tmp}/matches/{d.name}"
    ds.write_parquet(matches)
    for paths in dirs.values():
        for path in paths:
            _ensure_parquet(run, d, path)
    if run.fs.get_file_info(run._fs_path(matches)).type == pafs.FileType.NotFound:
        return MATCH_SCHEMA.empty_table()  # an empty input dataset
    return pads.dataset(
        run._fs_path(matches), filesystem=run.fs, format="parquet", schema=MATCH_SCHEMA
    ).to_table()


def _sweep(
    cfg: Config,
    problems: list[Problem],
    inputs: list[InputDataset],
    tables: dict[str, pa.Table],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The report (every removed row, counts per τ) and the ``_SUCCESS.json`` counts."""
    dcfg = cfg.decontam
    taus = sorted(dcfg.taus)
    bench_of = {p.task_id: p.benchmark for p in problems}
    method = "ast" if dcfg.candidates == "all" else "embed_ast"
    report: dict[str, Any] = {"taus": taus, "use_tau": dcfg.use_tau, "datasets": {}, "removed": []}
    counts: dict[str, Any] = {}
    for d in inputs:
        table = tables[d.name]
        rows = matched_rows(table, taus[0])
        summary = dataset_summary(table, rows, taus, method)
        summary["path"] = d.path
        report["datasets"][d.name] = summary
        report["removed"] += [row_report(r, d.name, taus, bench_of, method) for r in rows]
        prefix = "" if d.name == "exercises" else f"{d.name}_"
        counts[f"{prefix}rows_in"] = summary["rows"]
        for tau in taus:
            counts[f"{prefix}removed_{tau_name(tau)}"] = summary["taus"][tau_name(tau)]["removed"]
        for reason, n in summary["taus"][tau_name(dcfg.use_tau)]["by_reason"].items():
            counts[f"{prefix}dropped_{reason}"] = n
        counts[f"{prefix}kept"] = summary["taus"][tau_name(dcfg.use_tau)]["kept"]
    return report, counts


def _ensure_parquet(run: RunDir, d: InputDataset, fs_path: str) -> None:
    """Leave a readable, empty file with the dataset's schema where every row was removed."""
    sel = pafs.FileSelector(fs_path, allow_not_found=True)
    if any(f.path.endswith(".parquet") for f in run.fs.get_file_info(sel)):
        return
    schema = pads.dataset(run._fs_path(d.path), filesystem=run.fs, format="parquet").schema
    run.fs.create_dir(fs_path, recursive=True)
    with run.fs.open_output_stream(f"{fs_path}/part-empty.parquet") as f:
        pq.write_table(schema.empty_table(), f)
