"""Local source trees: listing planned on the driver, walked in Ray tasks, opened safely.

The driver looks at the top levels of a tree only (:func:`plan_shards`): the files it meets
there are grouped into small shards and each deeper directory becomes a shard of its own,
walked recursively by a Ray task (:func:`walk_shard`). The driver's memory therefore grows
with the number of top-level entries, not with the number of files.

Shards come out in an order whose concatenation is the whole tree's sorted path list (a
directory ``d`` sorts as ``d/``, exactly where its files fall among its siblings), so a
stride sample over the global index (``max_files``) picks the same files as sorting the
full list would, computed per shard from per-shard counts alone.

Opening is where hostile trees bite: a FIFO named ``x.py`` blocks ``open()`` forever, a
symlink can lead to a credentials file outside the tree, a socket or device is no source
code. :func:`open_regular` resolves the path, refuses anything outside the tree, and opens
regular files only (``O_NONBLOCK | O_NOFOLLOW``, then ``fstat`` on the descriptor, so a
file swapped for a FIFO or a symlink after the checks still cannot block or escape).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

EXCLUDED_TEST_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def tree_root(root: str) -> str:
    """The real directory every listed file must resolve into (a file root: its folder)."""
    real = os.path.realpath(root)
    return real if os.path.isdir(real) else os.path.dirname(real)


def exists(root: str) -> bool:
    """Whether a local path (a dangling link counts) or an object-store URI exists."""
    if "://" not in root:
        return os.path.lexists(root)
    fs, base = pafs.FileSystem.from_uri(root)
    return fs.get_file_info(base).type != pafs.FileType.NotFound


def _is_dir(root: str) -> bool:
    if "://" not in root:
        return os.path.isdir(root)
    fs, base = pafs.FileSystem.from_uri(root)
    return fs.get_file_info(base).type == pafs.FileType.Directory


def _entries(
    d: str, suffixes: tuple[str, ...], skip_tests: bool, limit: int | None = None
) -> list[tuple[str, str, bool]] | None:
    """(sort key, path, is_dir) of one directory's listable entries, in tree order; None
    when there are more than ``limit`` (the driver then leaves the folder to a task).

    As ``os.walk`` (no ``followlinks``): symlinked directories are not descended, so a link
    loop or a link to ``/`` lists nothing; every other entry with a matching name is listed,
    FIFOs and dangling links included, so the reader can give each one its drop reason.
    """
    if "://" in d:
        return _uri_entries(d, suffixes, skip_tests)
    out = []
    try:
        with os.scandir(d) as it:
            for e in it:
                try:
                    is_dir = e.is_dir()
                    is_link = e.is_symlink()
                except OSError:
                    is_dir = is_link = False
                if is_dir:
                    if not is_link and not (skip_tests and e.name in EXCLUDED_TEST_DIRS):
                        out.append((e.name + "/", e.path, True))
                elif e.name.endswith(suffixes):
                    out.append((e.name, e.path, False))
                if limit is not None and len(out) > limit:
                    return None
    except OSError:  # unreadable directory: nothing listed, as os.walk
        return []
    return sorted(out)


def _uri_entries(d: str, suffixes: tuple[str, ...], skip_tests: bool) -> list:
    fs, base = pafs.FileSystem.from_uri(d)
    scheme = d.split("://", 1)[0]
    out = []
    for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if i.type == pafs.FileType.Directory:
            if not (skip_tests and i.base_name in EXCLUDED_TEST_DIRS):
                out.append((i.base_name + "/", f"{scheme}://{i.path}", True))
        elif i.type == pafs.FileType.File and i.base_name.endswith(suffixes):
            out.append((i.base_name, f"{scheme}://{i.path}", False))
    return sorted(out)


def plan_shards(
    root: str,
    suffixes: tuple[str, ...],
    skip_tests: bool,
    files_per_shard: int = 128,
    min_shards: int = 16,
    max_depth: int = 3,
    max_entries: int = 10_000,
) -> list[dict[str, Any]]:
    """Shards covering the tree, in tree order: ``{"dir", "names": [paths]}`` (those files)
    or ``{"dir", "names": None}`` (all of ``dir``, walked recursively). Local paths or URIs.

    Directories are expanded level by level until there are ``min_shards`` shards or
    ``max_depth`` levels were looked at, so one big top-level folder still spreads; a
    folder with more than ``max_entries`` entries is not expanded here (a task walks it),
    so the driver holds at most that many names per folder it looks at.
    """
    if not _is_dir(root):
        return [{"dir": "", "names": [root]}]
    shards: list[dict[str, Any]] = [{"dir": root, "names": None}]
    for _ in range(max_depth):
        if len(shards) >= min_shards or all(s["names"] is not None for s in shards):
            break
        expanded: list[dict[str, Any]] = []
        for s in shards:
            if s["names"] is not None:
                expanded.append(s)
                continue
            entries = _entries(s["dir"], suffixes, skip_tests, max_entries)
            if entries is None:
                expanded.append(s)
                continue
            run: list[str] = []
            for _, path, is_dir in entries:
                if is_dir:
                    _flush(expanded, s["dir"], run, files_per_shard)
                    expanded.append({"dir": path, "names": None})
                else:
                    run.append(path)
            _flush(expanded, s["dir"], run, files_per_shard)
        shards = expanded
    return shards


def _flush(out: list, d: str, paths: list[str], per: int) -> None:
    for i in range(0, len(paths), per):
        out.append({"dir": d, "names": paths[i : i + per]})
    paths.clear()


def iter_shard(shard: dict[str, Any], suffixes: tuple[str, ...], skip_tests: bool) -> Iterator[str]:
    """The shard's file paths in sorted order, streamed (runs inside a Ray task).

    A depth-first walk over each folder's entries sorted by key (``name``, or ``name/``
    for a folder) yields exactly the sorted order of the full paths, holding only the
    folders along the current path: no list of the subtree, however large. Iterative, not
    ``os.walk``: 3.11's os.walk recurses once per level, and a tree 2,000 folders deep
    (one-letter names fit in PATH_MAX) would be a RecursionError in the task.
    """
    if shard["names"] is not None:
        yield from shard["names"]
        return
    if "://" in shard["dir"]:
        yield from _walk_uri(shard["dir"], suffixes, skip_tests)
        return
    stack = [iter(_entries(shard["dir"], suffixes, skip_tests) or ())]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry[2]:
            stack.append(iter(_entries(entry[1], suffixes, skip_tests) or ()))
        else:
            yield entry[1]


def walk_shard(shard: dict[str, Any], suffixes: tuple[str, ...], skip_tests: bool) -> list[str]:
    """:func:`iter_shard` as a list."""
    return list(iter_shard(shard, suffixes, skip_tests))


def display(path: str) -> str:
    """A path as valid UTF-8 text (undecodable name bytes become U+FFFD) for Arrow."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _walk_uri(d: str, suffixes: tuple[str, ...], skip_tests: bool) -> list[str]:
    fs, base = pafs.FileSystem.from_uri(d)
    scheme = d.split("://", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = []
    for i in infos:
        rel = i.path[len(base) :].strip("/").split("/")
        if skip_tests and EXCLUDED_TEST_DIRS.intersection(rel[:-1]):
            continue
        if i.type == pafs.FileType.File and i.base_name.endswith(suffixes):
            out.append(f"{scheme}://{i.path}")
    return sorted(out)


def stride_picks(offset: int, n: int, step: float) -> list[int]:
    """Local indices, within a shard covering global ``[offset, offset + n)``, of the
    global stride sample ``{int(i * step)}`` (the same files a global listing would pick)."""
    i = int(offset / step)
    while int(i * step) < offset:
        i += 1
    picks = []
    while (g := int(i * step)) < offset + n:
        picks.append(g - offset)
        i += 1
    return picks


def is_inside(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def open_regular(path: str, tree: str | None) -> tuple[int | None, str | None]:
    """(fd, None) for a regular file inside ``tree`` (None: no containment check), else
    (None, reason): ``outside_tree``, ``not_regular`` or ``unreadable``. Never blocks."""
    real = os.path.realpath(path)
    if tree is not None and not is_inside(real, tree):
        return None, "outside_tree"
    try:
        st = os.lstat(real)
    except OSError:  # dangling link, vanished file
        return None, "unreadable"
    if not stat.S_ISREG(st.st_mode):  # FIFO, socket, device, directory named *.py
        return None, "not_regular"
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError:
        return None, "unreadable"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the lstat
            os.close(fd)
            return None, "not_regular"
    except OSError:
        os.close(fd)
        return None, "unreadable"
    return fd, None


def read_regular(path: str, tree: str | None, max_bytes: int) -> tuple[bytes | None, str | None]:
    """At most ``max_bytes + 1`` bytes of a regular file, or (None, reason)."""
    fd, reason = open_regular(path, tree)
    if fd is None:
        return None, reason
    try:
        if os.fstat(fd).st_size > max_bytes:
            return None, "huge"  # not read at all: a 5 GB "x.py" must not reach memory
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1), None
    except OSError:
        return None, "unreadable"
    finally:
        os.close(fd)
