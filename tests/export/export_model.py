"""A tiny exported model shared by the export tests (5.x in-process and 4.x in a venv)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

from phi_ray.config import ModelConfig
from phi_ray.model.phi import build_model
from phi_ray.train.checkpoint import export_hf

# Indentation runs, tabs, non-ASCII, an emoji (byte fallback), the special token mid-text
# and a run longer than the longest whitespace token.
SAMPLES = [
    'def add(a, b):\n    """Sum."""\n    return a + b\n',
    "class A:\n\tdef f(self):\n\t\t\treturn 'é' + \"😀\"  # naïve\n",
    "x = 1<|endoftext|>y = 2" + " " * 40 + "\n\n\n",
    "  leading spaces, trailing spaces   ",
]


def export_tiny(out_dir: Path) -> tuple[Path, torch.nn.Module]:
    """Export a 2-layer Phi whose shape differs from every loader's fallback."""
    mcfg = ModelConfig(n_layer=2, hidden_size=64, intermediate_size=192, n_head=4, rotary_dim=4)
    model = build_model(mcfg, seed=7).eval()
    with torch.no_grad():  # non-zero biases and a non-trivial layer norm: nothing cancels out
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    export_hf(model.state_dict(), mcfg, str(out_dir))
    return out_dir, model


def stdlib_files(n: int) -> list[Path]:
    """The first ``n`` standard-library modules, tests excluded.

    Not ``conftest.stdlib_python_files``: ``from conftest import`` resolves to whichever
    conftest.py pytest imported last (tests/sandbox has its own), so it depends on order.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not {"site-packages", "test", "tests", "idle_test"} & set(p.parts)
    )
    return files[:n]
