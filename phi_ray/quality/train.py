"""The classify stage: embed the annotated files and fit the random-forest quality classifier.

``annotate/labels/`` (id, label, ...) is joined with ``annotate/sample/`` (id, content: the
annotated files, written by annotate, so the corpus is not read again) by id inside Ray
Data, the joined files are embedded by an actor pool (see :mod:`phi_ray.quality.data`),
and a scikit-learn ``RandomForestClassifier`` is fitted on a stratified train split.

The decision threshold is chosen on the forest's out-of-bag probabilities of the training
split (best F1, or the quantile that keeps ``target_keep_rate`` of files), so the
held-out split stays untouched for the reported metrics: precision, recall and F1 at the
threshold, macro F1, ROC-AUC, the confusion matrix, and the majority-class baseline.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sklearn import metrics as skm
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from phi_ray.config import Config, QualityConfig
from phi_ray.quality import data
from phi_ray.quality.classifier import METRICS_FILE, QualityClassifier, build_meta
from phi_ray.quality.embed import Embedder
from phi_ray.runs import RunDir, StageResult, resolve_fs
from phi_ray.runtime import init_ray

log = logging.getLogger(__name__)
LABEL_COLUMNS = ("id", "label")


def stage_hash(cfg: Config, run: RunDir) -> str:
    """quality section + upstream hashes + the seed (it draws tiny-codegen and the forest)."""
    h = run.config_hash(cfg, ("quality",), upstream=("ingest", "annotate"))
    return hashlib.sha256(f"{h}|seed={cfg.run.seed}".encode()).hexdigest()[:16]


def run(cfg: Config, run: RunDir) -> StageResult:
    """Train the classifier; writes ``classify/classifier/`` (model, meta, metrics)."""
    init_ray(cfg)
    with run.stage("classify", stage_hash(cfg, run)) as out:
        if out.skipped:
            return out.result
        run.require("ingest", needed_by="classify")
        run.require("annotate", needed_by="classify")
        labels = read_labels(run.path("annotate", "labels"))
        X, y, n_tokens = embed_labelled(cfg, run.path("annotate", "sample"), labels)
        q = cfg.quality
        model, split, threshold = fit_forest(X, y, q, cfg.run.seed)
        report = evaluate(model, X[split["test"]], y[split["test"]], y[split["train"]], threshold)
        report |= {"threshold_mode": q.threshold_mode, "n_train": len(split["train"])}
        report["oob_score"] = float(getattr(model, "oob_score_", float("nan")))

        clf_dir = f"{out.tmp}/classifier"
        meta = build_meta(_driver_embedder(cfg), threshold, threshold_mode=q.threshold_mode)
        meta |= {"n_estimators": q.n_estimators, "class_weight": q.class_weight}
        QualityClassifier(model, meta).save(clf_dir)
        run.write_json(f"{clf_dir}/{METRICS_FILE}", report)
        log.info("classify: F1 %.3f (majority baseline %.3f)", report["f1"], report["baseline_f1"])
        counts = {
            "labels_in": int(labels.attrs["rows_in"]),
            "labels_missing_in_sample": int(len(labels) - len(y)),
            "labels_joined": len(y),
            "positives": int(y.sum()),
            "n_train": len(split["train"]),
            "n_test": len(split["test"]),
            "tokens_embedded": n_tokens,
        }
        keys = ("f1", "macro_f1", "roc_auc", "baseline_f1", "threshold")
        return out.finish(counts=counts, metrics={k: report[k] for k in keys})


def _driver_embedder(cfg: Config) -> Embedder:
    """The embedder the actors ran, rebuilt here for its identity (weights digest)."""
    return Embedder(cfg.quality.embedder, device="cpu", seed=cfg.run.seed)


def read_labels(labels_dir: str) -> pd.DataFrame:
    """All label files as (id, label bool), one row per id; ``attrs['rows_in']`` = rows read."""
    files = data.list_parquet(labels_dir, "annotate labels")
    if not files:
        raise ValueError(f"{labels_dir}: no labelled files (*.parquet); run `phi-ray annotate`")
    frames = []
    for f in files:
        data.check_columns(f, LABEL_COLUMNS, "annotate labels")
        fs, p = resolve_fs(f)
        frames.append(pq.read_table(p, columns=list(LABEL_COLUMNS), filesystem=fs).to_pandas())
    df = pd.concat(frames, ignore_index=True)
    rows_in = len(df)
    if df["label"].isna().any():
        raise ValueError(f"{labels_dir}: {int(df['label'].isna().sum())} labels are null")
    df = df.drop_duplicates("id", keep="first").reset_index(drop=True)
    df["label"] = df["label"].astype(bool)
    df.attrs["rows_in"] = rows_in
    return df


def _select_ids(batch: pa.Table, ids: list[str]) -> pa.Table:
    return batch.filter(pc.is_in(batch["id"], value_set=pa.array(ids, type=pa.string())))


def embed_labelled(
    cfg: Config, sample_dir: str, labels: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, int]:
    """Embed the sampled files that have labels: (X, y) in label order, tokens embedded."""

    q = cfg.quality
    files = data.list_parquet(sample_dir, "annotate sample (rerun `phi-ray annotate`)")
    for f in files[:1]:
        data.check_columns(f, ("id", "content"), "annotate sample")
    if not files or labels.empty:
        raise ValueError(
            f"classify: nothing to embed ({len(files)} sample files, {len(labels)} labels)"
        )
    ds = data.corpus_dataset(files, q.batch_rows)
    ds = ds.map_batches(
        _select_ids, fn_kwargs={"ids": labels["id"].tolist()}, batch_format="pyarrow"
    )
    ds = ds.map_batches(
        data.tokenize_batch,
        fn_kwargs={"embedder": q.embedder},
        batch_format="pyarrow",
        batch_size=None,  # per reader block (<= batch_rows rows of one file); see data.py
    )
    ds = ds.map_batches(
        data.EmbedActor,
        fn_constructor_kwargs={
            "embedder": q.embedder,
            "seed": cfg.run.seed,
            "num_gpus": q.num_gpus,
            "num_cpus": q.num_cpus,
        },
        **data.actor_args(q),
    )
    vectors: dict[str, np.ndarray] = {}
    n_tokens = 0
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        vectors.update(zip(batch["id"].tolist(), batch["embedding"], strict=True))
        n_tokens += int(batch["n_embedded"].sum())
    found = labels[labels["id"].isin(vectors.keys())]
    if found.empty:
        raise ValueError(f"classify: none of the {len(labels)} labelled ids is in {sample_dir}")
    X = np.stack([vectors[i] for i in found["id"]]).astype(np.float32)
    return X, found["label"].to_numpy(dtype=bool), n_tokens


def fit_forest(
    X: np.ndarray, y: np.ndarray, q: QualityConfig, seed: int
) -> tuple[RandomForestClassifier, dict[str, np.ndarray], float]:
    """Fit on a stratified train split; pick the threshold on out-of-bag probabilities."""
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if min(n_pos, n_neg) < 2:
        raise ValueError(
            f"classify: need at least 2 labelled files of each class; got {n_pos} positive "
            f"and {n_neg} negative. Annotate more files (annotate.sample_size) or change "
            "annotate.positive_min_score."
        )
    try:
        train, test = train_test_split(
            np.arange(len(y)), test_size=q.test_size, stratify=y, random_state=seed
        )
    except ValueError as e:
        raise ValueError(
            f"classify: cannot split {len(y)} labels (quality.test_size): {e}"
        ) from None
    model = RandomForestClassifier(
        n_estimators=q.n_estimators,
        max_depth=q.max_depth,
        class_weight=None if q.class_weight == "none" else "balanced",
        oob_score=True,
        random_state=seed,
        n_jobs=-1,
    )
    with warnings.catch_warnings():  # tiny sets: a few rows may have no OOB estimate
        warnings.simplefilter("ignore", UserWarning)
        model.fit(X[train], y[train])
    oob = model.oob_decision_function_[:, list(model.classes_).index(True)]
    ok = np.isfinite(oob)
    threshold = pick_threshold(oob[ok], y[train][ok], q.threshold_mode, q.target_keep_rate)
    return model, {"train": train, "test": test}, threshold


def pick_threshold(probs: np.ndarray, y: np.ndarray, mode: str, keep_rate: float) -> float:
    """Best-F1 threshold, or the one keeping ``keep_rate`` of files (``probs >= t`` kept)."""
    if mode == "keep_rate":
        return float(np.quantile(probs, 1.0 - keep_rate, method="higher"))
    precision, recall, thresholds = skm.precision_recall_curve(y, probs)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def evaluate(
    model: Any, X: np.ndarray, y: np.ndarray, y_train: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Held-out metrics at ``threshold``, with the majority-class baseline beside them."""
    probs = model.predict_proba(X)[:, list(model.classes_).index(True)]
    pred = probs >= threshold
    majority = np.full(len(y), y_train.mean() >= 0.5)
    both = len(np.unique(y)) == 2
    return {
        "threshold": float(threshold),
        "n_test": len(y),
        "positive_rate": float(y.mean()),
        "keep_rate": float(pred.mean()),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y, probs)) if both else None,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=[False, True]).tolist(),
        "confusion_matrix_layout": "rows: true [neg, pos]; columns: predicted [neg, pos]",
        "baseline": f"majority class ({'positive' if majority[:1].any() else 'negative'})",
        "baseline_f1": float(skm.f1_score(y, majority, zero_division=0)),
        "baseline_macro_f1": float(skm.f1_score(y, majority, average="macro", zero_division=0)),
        "pr_curve": _pr_curve(y, probs) if both else None,
    }


def _pr_curve(y: np.ndarray, probs: np.ndarray, points: int = 200) -> dict[str, list[float]]:
    """The held-out precision-recall curve, thinned to at most ``points`` for the report."""
    precision, recall, thresholds = skm.precision_recall_curve(y, probs)
    keep = np.unique(np.linspace(0, len(thresholds) - 1, min(points, len(thresholds))).astype(int))
    return {
        "precision": [round(float(v), 4) for v in precision[keep]],
        "recall": [round(float(v), 4) for v in recall[keep]],
        "thresholds": [round(float(v), 4) for v in thresholds[keep]],
    }
