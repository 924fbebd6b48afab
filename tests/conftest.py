"""Test harness: one Ray per session, tiny configs, run directories, GPU/slow markers."""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

import pytest

# Keep each test session's tokenizer cache and Ray temp files out of the user's home.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (a start costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            configure_logging=False,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_cfg(tmp_path):
    """The tiny preset with its runs root in a temporary directory."""
    from phi_ray.config import load_config

    return load_config("tiny", [f"run.root={tmp_path / 'runs'}", "run.name=t"])


@pytest.fixture
def run_dir(tiny_cfg):
    from phi_ray.runs import RunDir

    return RunDir.from_config(tiny_cfg)


@pytest.fixture(scope="session")
def tokenizer():
    from phi_ray.model.tokenizer import get_tokenizer

    return get_tokenizer()


def stdlib_python_files(n: int | None = None) -> list[Path]:
    """Real Python files from the running interpreter's standard library (tests excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if "site-packages" not in p.parts
        and "test" not in p.parts
        and "tests" not in p.parts
        and "idle_test" not in p.parts
    )
    return files[:n] if n else files


@pytest.fixture(scope="session")
def stdlib_files():
    return stdlib_python_files(400)


sys.path.insert(0, str(REPO / "tests"))
