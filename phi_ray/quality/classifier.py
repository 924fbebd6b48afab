"""The quality classifier: a random forest over CodeGen embeddings, saved with its embedder.

A classifier directory holds ``model.joblib`` (the scikit-learn estimator), ``meta.json``
(the embedder's identity, the threshold, versions) and ``metrics.json`` (held-out
metrics, written by the classify stage). :meth:`QualityClassifier.load` rebuilds the
embedder from the meta, or checks that a given embedder is the one the forest was trained
on: vectors from another model, pooling or truncation length are meaningless to it.

>>> clf = QualityClassifier.load("runs/tiny/classify/classifier")
>>> probs, kept = clf.score(["def f():\\n    return 1\\n"])
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from typing import Any

import joblib
import numpy as np

from phi_ray.config import EmbedderConfig
from phi_ray.quality.embed import Embedder
from phi_ray.runs import resolve_fs

log = logging.getLogger(__name__)

MODEL_FILE = "model.joblib"
META_FILE = "meta.json"
METRICS_FILE = "metrics.json"
# Identity keys that must agree; "weights" catches a different checkpoint or seed.
_IDENTITY_KEYS = ("model", "pooling", "max_length", "dim", "layers", "hidden", "heads", "seed")


class EmbedderMismatchError(ValueError):
    """A classifier was given an embedder other than the one it was trained on."""


def _read_bytes(path: str) -> bytes:
    fs, p = resolve_fs(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; is this a classifier directory?") from None


def _write_bytes(path: str, data: bytes) -> None:
    fs, p = resolve_fs(path)
    with fs.open_output_stream(p) as f:
        f.write(data)


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def check_identity(expected: dict[str, Any], got: dict[str, Any], where: str) -> None:
    """Raise :class:`EmbedderMismatchError` listing every field where two embedders differ."""
    diffs = [
        f"{k}: trained with {expected.get(k)!r}, given {got.get(k)!r}"
        for k in (*_IDENTITY_KEYS, "weights")
        if expected.get(k) != got.get(k)
    ]
    if diffs:
        raise EmbedderMismatchError(
            f"{where}: the classifier was trained on another embedder ("
            + "; ".join(diffs)
            + "). Load it without an embedder to rebuild the right one, "
            "or retrain with `phi-ray classify --force`."
        )


class QualityClassifier:
    """A fitted forest, its decision threshold and the embedder it expects."""

    def __init__(self, model: Any, meta: dict[str, Any], embedder: Embedder | None = None) -> None:
        self.model = model
        self.meta = meta
        self.embedder = embedder
        classes = list(getattr(model, "classes_", [False, True]))
        # The positive class's column of predict_proba (labels are bool, or 0/1).
        self._pos = classes.index(True) if True in classes else len(classes) - 1

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    # -- persistence ------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write ``model.joblib`` and ``meta.json`` under ``path`` (a local dir or a URI)."""
        fs, p = resolve_fs(path)
        fs.create_dir(p, recursive=True)
        buf = io.BytesIO()
        joblib.dump(self.model, buf, compress=3)
        _write_bytes(_join(path, MODEL_FILE), buf.getvalue())
        meta = json.dumps(self.meta, indent=2, sort_keys=True, default=str)
        _write_bytes(_join(path, META_FILE), meta.encode())

    @classmethod
    def load(
        cls, path: str, embedder: Embedder | None = None, device: str = "cpu"
    ) -> QualityClassifier:
        """Load a classifier directory; build its embedder on ``device`` unless one is given.

        Raises :class:`EmbedderMismatchError` when ``embedder`` differs from the one the
        classifier was trained with (model, pooling, max length, dimension or weights).
        """
        try:
            meta = json.loads(_read_bytes(_join(path, META_FILE)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{_join(path, META_FILE)}: not valid JSON ({e})") from None
        for key in ("embedder", "embedder_config", "threshold"):
            if key not in meta:
                raise ValueError(f"{_join(path, META_FILE)}: missing key {key!r}")
        _warn_versions(meta, path)
        model = joblib.load(io.BytesIO(_read_bytes(_join(path, MODEL_FILE))))
        if embedder is None:
            conf = EmbedderConfig(**meta["embedder_config"])
            embedder = Embedder(conf, device=device, seed=int(meta["embedder"].get("seed", 0)))
        check_identity(meta["embedder"], embedder.identity(), path)
        return cls(model, meta, embedder)

    # -- scoring ----------------------------------------------------------------------
    def predict_embeddings(self, X: np.ndarray) -> np.ndarray:
        """P(educational) for ``(n, dim)`` embeddings."""
        if len(X) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.model.predict_proba(X)[:, self._pos].astype(np.float32)

    def score_embeddings(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = self.predict_embeddings(X)
        return probs, probs >= self.threshold

    def score(self, codes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, kept)`` for a list of code strings: float32 and bool arrays, input order."""
        if self.embedder is None:
            raise RuntimeError("this classifier has no embedder; load it with one")
        return self.score_embeddings(self.embedder.embed(list(codes)))


def _warn_versions(meta: dict[str, Any], path: str) -> None:
    import sklearn

    saved = meta.get("sklearn_version")
    if saved and saved != sklearn.__version__:
        log.warning(
            "%s was saved with scikit-learn %s; this is %s (predictions may differ)",
            path,
            saved,
            sklearn.__version__,
        )


def build_meta(embedder: Embedder, threshold: float, **extra: Any) -> dict[str, Any]:
    """The ``meta.json`` of a classifier trained on ``embedder``'s vectors."""
    import dataclasses

    import sklearn

    return {
        "embedder": embedder.identity(),
        "embedder_config": dataclasses.asdict(embedder.cfg),
        "sklearn_version": sklearn.__version__,
        "threshold": float(threshold),
        **extra,
    }
