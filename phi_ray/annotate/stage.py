"""The annotate stage: rate a stratified sample of the corpus for educational value.

Judges: the LLM judge (the paper's GPT-4 rating, through :mod:`phi_ray.llm`, rubric
``annotate.rubric_version``) when ``llm.base_url`` is set, else the deterministic
heuristic judge (:mod:`phi_ray.annotate.heuristic`), logged as such. ``annotate.judge``
forces one.

Output ``annotate/sample/*.parquet``: the sampled rows (id, content, path, source,
n_chars; see :mod:`phi_ray.annotate.sample`); ``annotate/labels/*.parquet``: id, score
(0–5), label (score >= ``positive_min_score``), judge, rubric_version, rationale; ``annotate/failures.jsonl``:
every sampled file that got no label, with the reason. LLM calls run from this driver
process: they are I/O-bound, so one asyncio loop keeps ``llm.max_concurrency`` requests
in flight; the heuristic judge is CPU-bound and runs as Ray Data ``map_batches`` (in
process for small samples).

A budget stop raises :class:`~phi_ray.llm.BudgetExceeded` (no ``_SUCCESS.json``); every
answer paid for is in the cache under ``.work/annotate/``, so a rerun with a larger
budget pays only for the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from phi_ray.annotate import heuristic
from phi_ray.annotate.rubric import build_request, check_version, parse_answer
from phi_ray.annotate.sample import stratified_sample, write_sample
from phi_ray.config import Config
from phi_ray.llm import BudgetExceeded, LLMClient
from phi_ray.runs import RunDir, StageResult, resolve_fs
from phi_ray.runtime import init_ray

log = logging.getLogger("phi_ray.annotate")

# Below this many rows the heuristic judge runs in-process: Ray Data's start-up costs more
# than judging a few thousand files (~3 ms each).
LOCAL_MAX_ROWS = 2000

LABEL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("score", pa.int64()),
        ("label", pa.bool_()),
        ("judge", pa.string()),
        ("rubric_version", pa.string()),
        ("rationale", pa.string()),
    ]
)


def resolve_judge(cfg: Config) -> str:
    """ "llm" or "heuristic"; ``auto`` means the LLM iff ``llm.base_url`` is set."""
    judge = cfg.annotate.judge
    if judge == "llm" and not cfg.llm.base_url:
        raise ValueError("annotate.judge=llm needs llm.base_url (an OpenAI-compatible endpoint)")
    if judge == "auto":
        judge = "llm" if cfg.llm.base_url else "heuristic"
    return judge


def _config_hash(cfg: Config, run: RunDir, judge: str) -> str:
    base = run.config_hash(cfg, ("annotate",), upstream=("ingest",))
    # sample v2: drawn in Ray and written to sample/ (an older output lacks it: redo)
    extra: dict[str, Any] = {"judge": judge, "seed": cfg.run.seed, "sample": 2}
    if judge == "llm":  # what changes the answers; not budgets or concurrency
        llm = cfg.llm
        extra |= {
            "url": llm.base_url,
            "model": cfg.annotate.model or llm.model,
            "temperature": llm.temperature,
        }
    blob = json.dumps([base, extra], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run(cfg: Config, run: RunDir) -> StageResult:
    """Sample, judge and write ``labels/`` + ``failures.jsonl`` (see the module docstring)."""
    init_ray(cfg)
    judge = resolve_judge(cfg)
    if judge == "llm":
        check_version(cfg.annotate.rubric_version)
    with run.stage("annotate", _config_hash(cfg, run, judge)) as out:
        if out.skipped:
            return out.result
        run.require("ingest", needed_by="annotate")
        a = cfg.annotate
        sample, strata = stratified_sample(
            run.path("ingest", "corpus"), a.sample_size, a.size_buckets, cfg.run.seed
        )
        # With its content, so that classify reads the sample, never the whole corpus again.
        write_sample(f"{out.tmp}/sample", sample, a.chunk_size)
        log.info("annotate: %d files sampled from %d strata", sample.num_rows, len(strata))
        if judge == "heuristic":
            log.warning(
                "annotate: no LLM configured (llm.base_url is null): rating with the offline "
                "HEURISTIC judge (%s), not an LLM. Set llm.base_url for the paper's LLM judge.",
                heuristic.VERSION,
            )
            labels, failures, extra = _heuristic_labels(sample, cfg)
        else:
            labels, failures, extra = _llm_labels(sample, cfg, run)
        _write(out.tmp, labels, failures, a.chunk_size)
        counts = _counts(sample.num_rows, labels, failures)
        log.info("annotate: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return out.finish(counts=counts, judge=judge, strata=strata, **extra)


def _label_table(
    ids: list[str],
    scores: list[int],
    rationales: list[str],
    judge: str,
    version: str,
    min_score: int,
) -> pa.Table:
    return pa.table(
        {
            "id": ids,
            "score": pa.array(scores, pa.int64()),
            "label": [s >= min_score for s in scores],
            "judge": [judge] * len(ids),
            "rubric_version": [version] * len(ids),
            "rationale": rationales,
        },
        schema=LABEL_SCHEMA,
    )


def _heuristic_batch(batch: pa.Table) -> pa.Table:
    judged = [heuristic.judge(c or "") for c in batch.column("content").to_pylist()]
    return pa.table(
        {
            "id": batch.column("id"),
            "score": pa.array([j.score for j in judged], pa.int64()),
            "rationale": [j.rationale for j in judged],
        }
    )


def _heuristic_labels(sample: pa.Table, cfg: Config) -> tuple[pa.Table, list[dict], dict]:
    rows = sample.select(["id", "content"])
    if rows.num_rows <= LOCAL_MAX_ROWS:
        judged = _heuristic_batch(rows)
    else:
        import ray

        ds = ray.data.from_arrow(rows).map_batches(
            _heuristic_batch, batch_format="pyarrow", batch_size=cfg.annotate.heuristic_batch_size
        )
        judged = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    judged = judged.sort_by("id")
    labels = _label_table(
        judged.column("id").to_pylist(),
        judged.column("score").to_pylist(),
        judged.column("rationale").to_pylist(),
        "heuristic",
        heuristic.VERSION,
        cfg.annotate.positive_min_score,
    )
    return labels, [], {"rubric_version": heuristic.VERSION}


def _llm_labels(sample: pa.Table, cfg: Config, run: RunDir) -> tuple[pa.Table, list[dict], dict]:
    a = cfg.annotate
    model = a.model or cfg.llm.model
    rows = sample.select(["id", "path", "content"]).to_pylist()
    chunks = [rows[i : i + a.chunk_size] for i in range(0, len(rows), a.chunk_size)]
    ids: list[str] = []
    scores: list[int] = []
    rationales: list[str] = []
    failures: list[dict] = []
    stats: Counter[str] = Counter()
    last: dict[str, Any] = {}
    # Every call of this stage leaves this one process, so its limiter is in-process: a Ray
    # actor (what clients in many workers share) would only add a round trip per call.
    with LLMClient(cfg.llm, run.work_path("annotate"), model=model, use_ray=False) as llm:
        for n, chunk in enumerate(chunks, 1):
            reqs = [
                build_request(
                    r["id"],
                    r["path"],
                    r["content"] or "",
                    a.rubric_version,
                    a.max_prompt_chars,
                    a.max_answer_tokens,
                )
                for r in chunk
            ]
            batch = llm.run_batch(reqs, parse_answer, desc=f"annotate {n}/{len(chunks)}")
            for res in batch.results:
                ids.append(res.id)
                scores.append(res.value["score"])
                rationales.append(res.value["rationale"])
            failures += [f.to_json() for f in batch.failures]
            stats.update({k: v for k, v in batch.stats.items() if k.startswith(_SUMMED)})
            last = batch.stats
            if batch.stopped_by_budget:
                not_started = len(batch.pending) + sum(len(c) for c in chunks[n:])
                raise BudgetExceeded(
                    f"annotate stopped: {batch.budget_message}. {len(ids)} files rated, "
                    f"{len(failures)} failed, {not_started} not started; every paid answer is "
                    f"cached in {run.work_path('annotate')}: rerun with a larger "
                    "llm.budget_usd / llm.budget_tokens to finish",
                    {
                        "done": len(ids),
                        "failed": len(failures),
                        "pending": not_started,
                        **_llm_summary(stats, last),
                    },
                )
    labels = _label_table(
        ids, scores, rationales, f"llm:{model}", a.rubric_version, a.positive_min_score
    ).sort_by("id")
    return labels, failures, {"rubric_version": a.rubric_version, "llm": _llm_summary(stats, last)}


_SUMMED = (
    "requests",
    "answered",
    "cache_hits",
    "api_calls",
    "attempts",
    "retr",
    "repairs",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "failures",
    "parse_failures",
)


def _llm_summary(stats: Counter, last: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(sorted(stats.items()))
    out["cost_usd"] = round(out.get("cost_usd", 0.0), 6)
    for k in ("model", "cache_entries", "total_tokens_all_runs", "total_cost_usd_all_runs"):
        if k in last:
            out[k] = last[k]
    return out


def _write(tmp: str, labels: pa.Table, failures: list[dict], rows_per_file: int) -> None:
    fs, base = resolve_fs(tmp)
    fs.create_dir(f"{base}/labels", recursive=True)
    for i in range(0, max(labels.num_rows, 1), rows_per_file):
        part = labels.slice(i, rows_per_file)
        pq.write_table(part, f"{base}/labels/part-{i // rows_per_file:05d}.parquet", filesystem=fs)
    with fs.open_output_stream(f"{base}/failures.jsonl") as f:
        f.write("".join(json.dumps(x) + "\n" for x in failures).encode())


def _counts(sampled: int, labels: pa.Table, failures: list[dict]) -> dict[str, int]:
    scores = Counter(labels.column("score").to_pylist())
    positives = sum(labels.column("label").to_pylist())
    counts = {
        "sampled": sampled,
        "labelled": labels.num_rows,
        "failed": len(failures),
        "positive": positives,
        "negative": labels.num_rows - positives,
    }
    counts |= {f"score_{s}": scores.get(s, 0) for s in range(6)}
    counts |= {f"failed_{r}": n for r, n in Counter(f["reason"] for f in failures).items()}
    return counts
