"""Cached virtual environments with their own wheel sets, for checks against other versions.

A check that must run under, say, transformers 4.57 cannot import it beside the project's
5.x, so it runs in a subprocess with that venv's interpreter. The venv is built once (a
minute or two of pip) under ``$PHI_RAY_CACHE/venvs`` (default ``~/.cache/phi-ray``) and
reused while its requirements are unchanged.

torch can be *borrowed* instead of installed: the venv then sees this interpreter's torch
(and nothing else of this interpreter's site-packages) through a ``.pth`` line pointing at
a directory of symlinks to torch's own top-level packages. That saves a multi-GB install
where only transformers' version is under test; torch's small dependencies are installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement


def cache_root() -> Path:
    root = os.environ.get("PHI_RAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "phi-ray"
    )
    return Path(root) / "venvs"


def _torch_parts() -> tuple[list[Path], list[str]]:
    """(paths to link: torch's top-level packages + dist-info, its runtime requirements)."""
    dist = md.distribution("torch")
    site = Path(str(dist.locate_file("")))
    tops = (dist.read_text("top_level.txt") or "torch").split()
    links = [site / t for t in tops if (site / t).exists()]
    links.append(Path(str(dist._path)))  # the dist-info: importlib.metadata.version("torch")
    reqs = []
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            reqs.append(str(req).split(";")[0].strip())
    return links, reqs


def cached_venv(name: str, requirements: list[str], borrow_torch: bool = False) -> Path:
    """The python of a venv holding ``requirements`` (built on first use, then reused)."""
    links, torch_reqs = _torch_parts() if borrow_torch else ([], [])
    key = "\n".join([sys.version, *requirements, *map(str, links), *torch_reqs])
    root = cache_root() / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    python = root / "bin" / "python"
    if (root / ".ready").exists():
        return python
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True)
    # pip from this interpreter installs into the new venv (--python): no bootstrap download
    pip = [sys.executable, "-m", "pip", "--python", str(tmp / "bin" / "python"), "install", "-q"]
    subprocess.run([*pip, *requirements, *torch_reqs], check=True)
    if links:
        shim = tmp / "borrowed"
        shim.mkdir()
        for p in links:
            (shim / p.name).symlink_to(p)
        site = next((tmp / "lib").glob("python3*/site-packages"))
        # Appended after the venv's own site-packages, so the venv's wheels win any overlap.
        # It names the final path: the venv is renamed there below (python finds its prefix
        # from pyvenv.cfg, wherever the directory lies).
        (site / "zz-borrowed.pth").write_text(f"{root / shim.name}\n")
    (tmp / ".ready").write_text(key)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished the same venv first
        shutil.rmtree(tmp, ignore_errors=True)
    return python
