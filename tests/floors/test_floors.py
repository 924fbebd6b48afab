"""pyproject's key dependency floors hold: phi-ray's own code runs at exactly those versions.

Builds (once, cached; ~15 min on first use: torch's floor is a full CUDA wheel set) a venv
whose KEY dependencies (see ``floors.py``) are pinned to their pyproject floors, then runs
``exercise_floors.py`` there: export and reload through transformers, MinHash schemes,
Ray Data expressions and reader, the real pretrain stage on Ray Train, FSDP2 wrapping and a
full-state checkpoint, and the Serve app answering a completion. ``make check-floors``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from floors import KEY, REPO, floor_requirements, floors
from venvs import cached_venv


def test_every_key_dependency_has_a_floor():
    have = floors()
    assert set(KEY) <= set(have), set(KEY) - set(have)
    pinned = [r for r in floor_requirements() if "==" in r]
    assert len(pinned) == len(KEY), pinned


@pytest.mark.skipif(
    not os.environ.get("PHI_RAY_FLOORS"), reason="builds a venv of the floors: make check-floors"
)
def test_phi_ray_runs_at_its_floors(tmp_path):
    python = cached_venv("floors", floor_requirements())
    here = Path(__file__).parent
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(map(str, [REPO, REPO / "tests", here, REPO / "serve"])),
        "RAY_TRAIN_V2_ENABLED": "1",
        "PHI_RAY_CACHE": str(tmp_path / "cache"),  # the tokenizer is built at the floors too
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [str(python), str(here / "exercise_floors.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    done = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ok ")]
    assert len(done) == 7, done
