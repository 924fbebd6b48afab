"""Test harness: one Ray per session, tiny configs, run directories, GPU/slow markers."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

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


RAY = str(Path(sys.executable).parent / "ray")


class Head(NamedTuple):
    dashboard: str  # http://127.0.0.1:PORT, for `ray job submit --address`
    address: str  # 127.0.0.1:PORT (GCS), for RAY_ADDRESS
    env: dict[str, str]  # os.environ with this head's auth token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_head():
    """A real `ray start --head` on 127.0.0.1 in a temporary directory."""
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length cap
    port, dash = _free_port(), _free_port()
    # Ray 2.60 enables token auth for local clusters; give this head its own token, and the
    # job client the same one, as a user of a secured cluster would.
    token = Path(tmp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    start = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--num-cpus=2",
        f"--temp-dir={tmp}",
        "--disable-usage-stats",
        # The test session's own Ray holds the agents' default ports (52365, ...): a head that
        # reused them would come up without a job agent. Every port of this head is its own.
        *(
            f"--{flag}={_free_port()}"
            for flag in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "metrics-export-port",
                "runtime-env-agent-port",
                "ray-client-server-port",
                "node-manager-port",
                "object-manager-port",
            )
        ),
    ]
    # Its own session: every daemon it spawns shares one process group, so teardown can stop
    # this head alone. (`ray stop` would stop every Ray on the machine, the test session's too.)
    proc = subprocess.Popen(
        start, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out.decode()[-3000:]
    try:
        yield Head(f"http://127.0.0.1:{dash}", f"127.0.0.1:{port}", env)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            time.sleep(2)
        shutil.rmtree(tmp, ignore_errors=True)


sys.path.insert(0, str(REPO / "tests"))


# The sandbox attack suite's fixtures (tests/sandbox/kit.py; see there why not a conftest).
@pytest.fixture(scope="session")
def sandbox():
    from tests.sandbox.kit import sandbox_pool

    yield from sandbox_pool()


@pytest.fixture
def listener():
    from tests.sandbox.kit import listener_server

    yield from listener_server()


@pytest.fixture
def secret_file():
    from tests.sandbox.kit import planted_secret

    yield from planted_secret()
