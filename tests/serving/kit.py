"""What the serving tests share: a tiny classifier on disk, and ``phi-ray serve`` started as
a user starts it (a subprocess with its own local Ray, offline) and waited for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from conftest import stdlib_python_files

from phi_ray.config import EmbedderConfig
from tests.s3_server import free_port

__all__ = ["free_port", "save_classifier", "serve_command", "serve_env", "wait_health"]
BIN = Path(sys.executable).parent


def save_classifier(path: Path) -> None:
    """A real quality classifier (tiny CodeGen embedder + random forest) saved at ``path``."""
    from sklearn.ensemble import RandomForestClassifier

    from phi_ray.quality.classifier import QualityClassifier, build_meta
    from phi_ray.quality.embed import Embedder

    cfg = EmbedderConfig(model="tiny-codegen", max_length=64, batch_size=4, tiny_hidden=32)
    emb = Embedder(cfg, seed=7)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_python_files(24)]
    y = np.array(['"""' in t for t in texts])
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(emb.embed(texts), y)
    QualityClassifier(forest, build_meta(emb, threshold=0.5), emb).save(str(path))


def serve_command(model_dir: Path, root: Path, port: int) -> list[str]:
    """``phi-ray serve --model DIR --port P`` with its runs dir under ``root``."""
    cmd = [str(BIN / "phi-ray"), "serve", "--model", str(model_dir), "--port", str(port)]
    return [*cmd, "--runs-dir", str(root / "runs")]


def serve_env() -> dict[str, str]:
    """Its own local Ray, as a user's `phi-ray serve` starts (not the test session's)."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1"}


def wait_health(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 300) -> None:
    """Until ``/health`` answers 200; fails with the log's tail if the process exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "phi-ray serve did not come up"
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
