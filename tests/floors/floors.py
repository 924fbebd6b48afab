"""The dependency floors of pyproject.toml, and a venv that holds the key ones exactly."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
# The floors whose APIs phi-ray's code depends on most (see exercise_floors.py for what is
# exercised at each); the other dependencies resolve to what pip picks beside these.
KEY = (
    "ray",
    "torch",
    "transformers",
    "tokenizers",
    "datasketch",
    "safetensors",
    "pandas",
    "pyarrow",
)


def _dependencies() -> list[Any]:
    import tomllib  # Python 3.11+: imported here so collection works on 3.10

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def floors() -> dict[str, str]:
    """``{name: oldest version}`` for every runtime dependency with a ``>=`` floor."""
    deps = _dependencies()
    out = {}
    for d in deps:
        req = Requirement(d)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if lows:
            out[req.name] = lows[0]
    return out


def floor_requirements() -> list[str]:
    """pyproject's dependencies with the KEY ones pinned to their floors, plus pytest."""
    deps = _dependencies()
    out = []
    for d in deps:
        req = Requirement(d)
        low = floors().get(req.name)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        out.append(f"{req.name}{extras}=={low}" if req.name in KEY and low else d)
    return [*out, "pytest>=8", "pytest-timeout>=2.3"]


if __name__ == "__main__":
    print("\n".join(floor_requirements()), file=sys.stdout)
