"""Memory sampling the benches share: a process's RSS, alone and with its descendants."""

from __future__ import annotations

import psutil


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of ``proc``, RSS of ``proc`` plus every descendant, e.g. a Ray node it started).
    Raises ``psutil.Error`` when ``proc`` itself is gone; a descendant that exits while it
    is read counts 0."""
    own = proc.memory_info().rss
    return own, own + sum(_rss(c) for c in proc.children(recursive=True))


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0
