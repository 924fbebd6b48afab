"""classify and score stages on real stdlib files, real Ray, a tiny CodeGen embedder.

Fixtures write ``ingest/corpus`` and ``annotate/labels`` themselves (the contracts of
those stages) with labels that depend on the code: a file is "educational" when it keeps
its docstrings and comments, "not" when they were stripped (``ast.unparse``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, stdlib_python_files

from phi_ray.config import load_config
from phi_ray.quality import score as score_stage
from phi_ray.quality import train as classify_stage
from phi_ray.quality.classifier import QualityClassifier
from phi_ray.runs import RunDir

N_FILES = 120
ROWS_PER_FILE = 10
OVERRIDES = [
    "quality.batch_rows=8",
    "quality.embedder.max_length=128",
    "quality.embedder.batch_size=8",
    "quality.n_estimators=60",
]


def _strip(src: str) -> str | None:
    """The same code without docstrings and comments."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        value = getattr(first, "value", None) if isinstance(first, ast.Expr) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _documents(tokenizer) -> pd.DataFrame:
    rows = []
    for k, path in enumerate(stdlib_python_files(N_FILES + 40)):
        src = path.read_text(encoding="utf-8", errors="replace")
        text = src if k % 2 == 0 else _strip(src)
        if not text or len(text) < 200 or len(rows) >= N_FILES:
            continue
        rows.append({
            "id": hashlib.sha256(text.encode()).hexdigest(),
            "content": text,
            "path": str(path),
            "repo": "cpython",
            "license": "PSF-2.0",
            "source": "stdlib",
            "n_chars": len(text),
            "n_tokens": len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            "_label": k % 2 == 0,
        })  # fmt: skip
    return pd.DataFrame(rows).drop_duplicates("id")


def write_upstream(run: RunDir, docs: pd.DataFrame, labelled: pd.DataFrame) -> None:
    """ingest/corpus and annotate/{sample,labels} as those stages write them, complete."""
    with run.stage("ingest", "fixture") as out:
        os.makedirs(f"{out.tmp}/corpus")
        corpus = docs.drop(columns=["_label"])
        for j, start in enumerate(range(0, len(corpus), ROWS_PER_FILE)):
            part = pa.Table.from_pandas(
                corpus.iloc[start : start + ROWS_PER_FILE], preserve_index=False
            )
            pq.write_table(part, f"{out.tmp}/corpus/part-{j:05d}.parquet")
        out.finish(counts={"rows_out": len(corpus)})
    with run.stage("annotate", "fixture") as out:
        os.makedirs(f"{out.tmp}/labels")
        os.makedirs(f"{out.tmp}/sample")
        sample = labelled[["id", "content", "path", "source", "n_chars"]]
        for j, start in enumerate(range(0, len(sample), 25)):  # classify reads several files
            pq.write_table(
                pa.Table.from_pandas(sample.iloc[start : start + 25], preserve_index=False),
                f"{out.tmp}/sample/part-{j:05d}.parquet",
            )
        labels = pd.DataFrame({
            "id": labelled["id"],
            "score": labelled["_label"].map({True: 4, False: 1}).astype("int64"),
            "label": labelled["_label"],
            "judge": "fixture",
            "rubric_version": "v1",
            "rationale": "",
        })  # fmt: skip
        pq.write_table(
            pa.Table.from_pandas(labels, preserve_index=False),
            f"{out.tmp}/labels/part-00000.parquet",
        )
        out.finish(counts={"rows_out": len(labels)})


@pytest.fixture(scope="module")
def classified(tmp_path_factory, tokenizer, ray_session):
    """A run with corpus, labels (3/4 of the corpus) and a trained classifier."""
    root = tmp_path_factory.mktemp("quality")
    cfg = load_config("tiny", [f"run.root={root}", "run.name=q", *OVERRIDES])
    run = RunDir.from_config(cfg)
    docs = _documents(tokenizer)
    write_upstream(run, docs, docs.sample(frac=0.75, random_state=0))
    res = classify_stage.run(cfg, run)
    return cfg, run, docs, res


def test_classify_beats_majority_baseline(classified):
    cfg, run, docs, res = classified
    clf_dir = Path(run.path("classify", "classifier"))
    metrics = json.loads((clf_dir / "metrics.json").read_text())
    meta = json.loads((clf_dir / "meta.json").read_text())
    assert (
        metrics["f1"] > metrics["baseline_f1"]
        and metrics["macro_f1"] > metrics["baseline_macro_f1"]
    )
    assert metrics["roc_auc"] > 0.5
    assert sum(map(sum, metrics["confusion_matrix"])) == metrics["n_test"] == res.counts["n_test"]
    assert meta["embedder"]["model"] == "tiny-codegen" and meta["embedder"]["max_length"] == 128
    assert meta["embedder"]["seed"] == cfg.run.seed and meta["sklearn_version"]
    assert res.counts["labels_joined"] == res.counts["labels_in"] == int(len(docs) * 0.75)
    assert classify_stage.run(cfg, run).skipped  # unchanged inputs: not retrained


def _read_dir(path: str) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted(Path(path).glob("*.parquet"))])


def test_score_one_row_per_id_and_filtered(classified):
    cfg, run, docs, _ = classified
    res = score_stage.run(cfg, run)
    scored = _read_dir(run.path("score", "scored"))
    assert sorted(scored["id"]) == sorted(docs["id"])  # one row per input id, no more
    assert scored["quality"].between(0, 1).all() and scored["kept"].dtype == bool
    filtered = _read_dir(run.path("score", "filtered"))
    assert set(filtered["id"]) == set(scored.loc[scored["kept"], "id"])
    assert {"content", "path", "repo", "n_tokens", "quality"} <= set(filtered.columns)
    assert (
        filtered["quality"] >= QualityClassifier.load(run.path("classify", "classifier")).threshold
    ).all()
    c = res.counts
    assert c["rows_in"] == len(docs) and c["rows_out"] == len(filtered)
    assert (
        c["tokens_in"] == docs["n_tokens"].sum() and c["tokens_out"] == filtered["n_tokens"].sum()
    )
    assert c["dropped"]["low_quality"] == len(docs) - len(filtered)
    assert (
        c["shards_scored"]
        == c["shards_total"]
        == len(list(Path(run.path("ingest", "corpus")).glob("*")))
    )
    # Educational (documented) files score higher than stripped ones, on every file.
    q = scored.merge(docs[["id", "_label"]], on="id").groupby("_label")["quality"].mean()
    assert q[True] > q[False]
    assert score_stage.run(cfg, run).skipped


def test_score_killed_midway_resumes_without_gaps(classified, ray_session, tmp_path):
    _, run0, docs, _ = classified
    root = tmp_path / "runs"
    shutil.copytree(run0.path(""), root / "q", ignore=shutil.ignore_patterns("score", ".work"))
    overrides = [f"run.root={root}", "run.name=q", *OVERRIDES]
    cfg = load_config("tiny", overrides)
    run = RunDir.from_config(cfg)
    # A longer corpus (the same upstream hashes, so the classifier stays valid): 40 shards,
    # each taking long enough that the child is caught between two of them.
    corpus = Path(run.path("ingest", "corpus"))
    docs = pd.concat([docs.assign(content=docs["content"] + f"\n# copy {k}\n") for k in range(5)])
    docs["id"] = [hashlib.sha256(t.encode()).hexdigest() for t in docs["content"]]
    for f in corpus.glob("*.parquet"):
        f.unlink()
    table = pa.Table.from_pandas(docs.drop(columns=["_label"]), preserve_index=False)
    for j, start in enumerate(range(0, len(docs), 15)):
        pq.write_table(table.slice(start, 15), corpus / f"part-{j:05d}.parquet")
    shards = Path(f"{run.work_path('score')}/shards-{score_stage.stage_hash(cfg, run)}")
    env = os.environ | {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    args = [sys.executable, str(REPO / "jobs/score.py")]
    for o in overrides:
        args += ["--set", o]
    log = open(tmp_path / "score.log", "wb")  # the child writes it
    proc = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    # Generous: on a loaded 2-core machine the child's imports and actor start take long.
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if shards.exists() and any(shards.glob("shard-*.parquet")):
            break
        time.sleep(0.02)
    exited = proc.poll()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert exited is None, (tmp_path / "score.log").read_text()[-3000:]
    finished = sorted(p.name for p in shards.glob("shard-*.parquet"))
    total = len(list(Path(run.path("ingest", "corpus")).glob("*.parquet")))
    assert 0 < len(finished) < total, f"kill did not land midway: {len(finished)}/{total}"
    assert not run.is_complete("score")

    res = score_stage.run(cfg, run)
    c = res.counts
    assert c["shards_reused"] == len(finished) and c["shards_scored"] == total - len(finished)
    assert c["rows_scored"] < len(docs)  # finished shards were not embedded again
    scored = _read_dir(run.path("score", "scored"))
    assert scored["id"].is_unique and set(scored["id"]) == set(docs["id"])
    assert c["rows_in"] == len(docs) and not shards.exists()


def test_empty_corpus_file_and_empty_labels(classified, tmp_path):
    _, run0, _, _ = classified
    root = tmp_path / "runs"
    shutil.copytree(run0.path(""), root / "q", ignore=shutil.ignore_patterns("score", ".work"))
    cfg = load_config("tiny", [f"run.root={root}", "run.name=q", *OVERRIDES])
    run = RunDir.from_config(cfg)
    corpus = Path(run.path("ingest", "corpus"))
    schema = pq.read_schema(next(corpus.glob("*.parquet")))
    for f in corpus.glob("*.parquet"):
        f.unlink()
    pq.write_table(schema.empty_table(), corpus / "part-00000.parquet")  # documented: empty parts
    res = score_stage.run(cfg, run)
    assert res.counts["rows_in"] == 0 and res.counts["rows_out"] == 0
    assert pq.read_table(run.path("score", "filtered", "part-00000.parquet")).num_rows == 0

    labels = Path(run.path("annotate", "labels", "part-00000.parquet"))
    pq.write_table(pq.read_table(labels).slice(0, 0), labels)
    with pytest.raises(ValueError, match="nothing to embed"):
        classify_stage.run(
            load_config("tiny", [f"run.root={root}", "run.name=q", "quality.n_estimators=7"]), run
        )


def test_score_with_duplicate_ids_one_score_per_row_and_reruns(classified, tmp_path):
    """Exact dedup off: an id repeats in a file and across files. Every row gets one score
    (a join on id alone multiplied rows and failed the stage on every rerun)."""
    _, run0, docs, _ = classified
    root = tmp_path / "runs"
    shutil.copytree(run0.path(""), root / "q", ignore=shutil.ignore_patterns("score", ".work"))
    cfg = load_config("tiny", [f"run.root={root}", "run.name=q", *OVERRIDES])
    run = RunDir.from_config(cfg)
    corpus = Path(run.path("ingest", "corpus"))
    for f in corpus.glob("*.parquet"):
        f.unlink()
    base = docs.drop(columns=["_label"]).head(12)
    # file 0: rows 0-5 then 0-2 again (3 repeats inside the file); file 1: rows 3-11 + 0.
    parts = [pd.concat([base.iloc[:6], base.iloc[:3]]), pd.concat([base.iloc[3:], base.iloc[:1]])]
    for j, part in enumerate(parts):
        table = pa.Table.from_pandas(part, preserve_index=False)
        pq.write_table(table, corpus / f"part-{j:05d}.parquet")
    res = score_stage.run(cfg, run)
    for j, part in enumerate(parts):
        scored = pq.read_table(run.path("score", "scored", f"part-{j:05d}.parquet")).to_pandas()
        assert scored["id"].tolist() == part["id"].tolist()  # one row per input row, in order
    scored = _read_dir(run.path("score", "scored"))
    assert (scored.groupby("id")["quality"].nunique() == 1).all()  # a copy scores as its id
    assert res.counts["rows_in"] == len(scored) == 9 + 10
    assert score_stage.run(cfg, run).skipped


def test_score_pool_bounds_follow_config_and_cluster_gpus():
    from phi_ray.config import QualityConfig
    from phi_ray.quality.data import pool_bounds

    assert pool_bounds(QualityConfig(), cluster_gpus=8) == (1, 1)  # CPU actors: a fixed pool
    assert pool_bounds(QualityConfig(num_gpus=1), cluster_gpus=8) == (1, 8)
    assert pool_bounds(QualityConfig(num_gpus=0.5, concurrency=2), cluster_gpus=3) == (2, 6)
    assert pool_bounds(QualityConfig(num_gpus=1, concurrency=2), cluster_gpus=0) == (2, 2)
    # the operator's bound wins: an autoscaling cluster may grow past today's GPUs
    assert pool_bounds(QualityConfig(num_gpus=1, max_concurrency=32), cluster_gpus=8) == (1, 32)
    with pytest.raises(ValueError, match="max_concurrency"):
        QualityConfig(concurrency=4, max_concurrency=2)
