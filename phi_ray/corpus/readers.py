"""Readers: every source becomes a Ray Dataset of raw rows in one schema.

Raw rows are ``content`` (null when the input could not be used), ``path``, ``repo``,
``license``, ``source`` and ``drop`` (``""``, or the reason the input is unusable; see
:mod:`phi_ray.corpus.filters`). File contents are read inside Ray tasks: the driver only
plans listings (see :mod:`phi_ray.corpus.listing`) or lists Parquet fragments, it never
holds the corpus. A hostile input (a FIFO, a link out of the tree, a wrongly typed or
undecodable column) is a row with a drop reason, never a crash or a hang.

Sources (``corpus.sources[*].kind``):

* ``stack_parquet`` / ``hub``: The Stack (dedup) Parquet layout, local, at an
  object-store URI, or on the Hugging Face hub; see :mod:`phi_ray.corpus.stack`.
* ``stackoverflow``: question/answer records (JSONL, optionally gzipped, or Parquet); see
  :mod:`phi_ray.corpus.stackoverflow`.
* ``local_dir`` / ``stdlib``: a tree of ``.py`` files, listed inside Ray tasks;
  ``stdlib`` is the running Python's standard library without its tests, so the tiny
  preset needs no download.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from phi_ray.config import SourceConfig, resolve_path
from phi_ray.corpus import listing, stackoverflow
from phi_ray.corpus.filters import decode_bytes

log = logging.getLogger("phi_ray.corpus")
RAW_SCHEMA = pa.schema(
    [
        ("content", pa.string()),
        ("path", pa.string()),
        ("repo", pa.string()),
        ("license", pa.string()),
        ("source", pa.string()),
        ("drop", pa.string()),
    ]
)
_DEFAULT_NAME = {
    "stack_parquet": "the-stack",
    "hub": "the-stack",
    "stackoverflow": "stackoverflow",
    "local_dir": "local",
    "stdlib": "stdlib",
}
_DEFAULT_LICENSE = {"stdlib": "PSF-2.0", "stackoverflow": "CC-BY-SA-4.0", "local_dir": "unknown"}
FILES_PER_BLOCK = 128  # local files per Ray read block: ~1-2 MB of code, enough to amortise


class CorpusError(ValueError):
    """A user-facing problem with a corpus source (missing, empty, unreadable layout)."""


def source_name(src: SourceConfig) -> str:
    return src.name or _DEFAULT_NAME[src.kind]


def is_code(src: SourceConfig) -> bool:
    return src.kind != "stackoverflow"


def read_source(src: SourceConfig, max_bytes: int, index: int = 0) -> Any:
    """A Ray Dataset of raw rows for one configured source."""
    where = f"corpus.sources[{index}] (kind={src.kind}, path={src.path or '<stdlib>'})"
    if src.kind in ("local_dir", "stdlib"):
        return _read_files(src, where, max_bytes)
    if src.kind == "stack_parquet":
        from phi_ray.corpus.stack import read_stack

        files = [f for f, _ in _list(src, where, (".parquet",))]
        return read_stack(src, where, files, None, max_bytes)
    if src.kind == "stackoverflow":
        files = _list(src, where, stackoverflow.SUFFIXES)
        return stackoverflow.read(src, where, files, max_bytes)
    if src.kind == "hub":
        from phi_ray.corpus.stack import read_hub

        return read_hub(src, where, max_bytes)
    raise CorpusError(f"{where}: unknown source kind {src.kind!r}")


# --------------------------------------------------------------------------- listing


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _root(src: SourceConfig) -> str:
    return stdlib_root() if src.kind == "stdlib" else resolve_path(src.path)


def _list(src: SourceConfig, where: str, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, size) of the source's input files, listed here, sorted; an error if none.

    For sources with few, large files (Parquet, JSONL dumps); ``.py`` trees are listed
    inside Ray tasks instead (:func:`_read_files`). Local entries that are not regular
    files inside the tree are left out with a warning: a FIFO would block the reader.
    """
    root = _root(src)
    if "://" in root:
        files = _list_uri(root, where, suffixes)
    else:
        files = _list_local(root, where, suffixes, skip_tests=src.kind == "stdlib")
    if not files:
        raise CorpusError(f"{where}: no {'/'.join(suffixes)} files under {root}")
    if src.max_files and len(files) > src.max_files:
        # An even stride over the sorted list: a deterministic sample that spans every
        # package rather than the alphabetically first few.
        step = len(files) / src.max_files
        files = [files[int(i * step)] for i in range(src.max_files)]
    return files


def _list_local(
    root: str, where: str, suffixes: tuple[str, ...], skip_tests: bool
) -> list[tuple[str, int]]:
    if not os.path.lexists(root):
        raise CorpusError(f"{where}: {root} does not exist")
    tree = listing.tree_root(root)
    out = []
    for shard in listing.plan_shards(root, suffixes, skip_tests, max_depth=1):
        for p in listing.walk_shard(shard, suffixes, skip_tests):
            fd, reason = listing.open_regular(p, tree)
            if fd is None or listing.display(p) != p:  # a FIFO would block; Arrow needs UTF-8
                log.warning("%s: skipping %s (%s)", where, listing.display(p), reason or "name")
                if fd is not None:
                    os.close(fd)
                continue
            out.append((p, os.fstat(fd).st_size))
            os.close(fd)
    return sorted(out)


def _list_uri(root: str, where: str, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    fs, base = pafs.FileSystem.from_uri(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise CorpusError(f"{where}: {root} does not exist")
    scheme = root.split("://", 1)[0]
    if info.type == pafs.FileType.File:
        return [(root, info.size or 0)]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return sorted(
        (f"{scheme}://{i.path}", i.size or 0)
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffixes)
    )


# --------------------------------------------------------------------------- .py trees


def _read_files(src: SourceConfig, where: str, max_bytes: int) -> Any:
    """Plan shards here, list and read them in Ray tasks, ``FILES_PER_BLOCK`` per block."""
    import ray

    root, skip = _root(src), src.kind == "stdlib"
    if not listing.exists(root):
        raise CorpusError(f"{where}: {root} does not exist")
    shards = listing.plan_shards(root, (".py",), skip, FILES_PER_BLOCK)
    if not shards:
        raise CorpusError(f"{where}: no .py files under {root}")
    sample = _sample_plan(shards, src, where, root) if src.max_files else None
    if src.kind == "stdlib":
        repo = f"cpython/Lib@{sys.version_info.major}.{sys.version_info.minor}"
    else:
        repo = os.path.basename(os.path.normpath(root.split("://")[-1])) or root
    items = [
        {"shard": json.dumps(s), "sample": json.dumps(sample[i] if sample else None)}
        for i, s in enumerate(shards)
    ]
    tree = None if "://" in root else listing.tree_root(root)
    meta = {"license": src.license or _DEFAULT_LICENSE[src.kind], "source": source_name(src)}
    # Listing a shard is cheap next to reading it: about two listing tasks per CPU.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    blocks = min(len(items), 2 * cpus)
    listed = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        list_shard_batch,
        batch_format="pyarrow",
        batch_size=1,
        fn_kwargs={"root": root, "repo": repo, "skip_tests": skip},
    )
    # Listing blocks are as large as their subtrees: re-cut them (streaming, no shuffle)
    # so every read task gets FILES_PER_BLOCK files whatever the tree's shape.
    return listed.repartition(target_num_rows_per_block=FILES_PER_BLOCK).map_batches(
        read_file_batch,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"max_bytes": max_bytes, "tree": tree, **meta},
    )


def _sample_plan(shards: list, src: SourceConfig, where: str, root: str) -> list | None:
    """Per shard ``[offset, n, step]`` of the global stride sample, from counts made in
    Ray tasks (the driver holds one integer per shard); None when no sampling is needed."""
    import ray

    count = ray.remote(num_cpus=1)(_count_shards)
    groups = [shards[i : i + 64] for i in range(0, len(shards), 64)]
    skip = src.kind == "stdlib"
    counts = [c for g in ray.get([count.remote(g, skip) for g in groups]) for c in g]
    total = sum(counts)
    if total == 0:
        raise CorpusError(f"{where}: no .py files under {root}")
    if total <= src.max_files:
        return None
    step, offset, plan = total / src.max_files, 0, []
    for n in counts:
        plan.append([offset, n, step])
        offset += n
    return plan


def _count_shards(shards: list, skip_tests: bool) -> list[int]:
    return [sum(1 for _ in listing.iter_shard(s, (".py",), skip_tests)) for s in shards]


def list_shard_batch(batch: pa.Table, root: str, repo: str, skip_tests: bool) -> Iterator[pa.Table]:
    """Shards -> listed items (file, rel, repo): the walk happens here, in the task,
    streamed in ``FILES_PER_BLOCK`` pieces (a subtree's listing is never held whole)."""
    for item in batch.to_pylist():
        paths = listing.iter_shard(json.loads(item["shard"]), (".py",), skip_tests)
        sample = json.loads(item["sample"])
        if sample is not None:
            paths = _picked(paths, *sample)
        chunk: list[str] = []
        for p in paths:
            chunk.append(p)
            if len(chunk) == FILES_PER_BLOCK:
                yield _listed(chunk, root, repo)
                chunk = []
        if chunk:
            yield _listed(chunk, root, repo)


def _picked(paths: Iterator[str], offset: int, n: int, step: float) -> Iterator[str]:
    """The paths at the local indices :func:`listing.stride_picks` names, streamed."""
    want = iter(listing.stride_picks(offset, n, step))
    nxt = next(want, None)
    for i, p in enumerate(paths):
        if nxt is None:
            return
        if i == nxt:
            yield p
            nxt = next(want, None)


def _listed(files: list[str], root: str, repo: str) -> pa.Table:
    # Paths travel as bytes: a file name that is not UTF-8 (surrogate-escaped here) is
    # still a file to read and count, and Arrow strings cannot hold it.
    rel = [listing.display(_relpath(p, root)) for p in files]
    raw = pa.array([os.fsencode(p) for p in files], pa.binary())
    return pa.table({"file": raw, "rel": rel, "repo": [repo] * len(files)})


def _relpath(p: str, root: str) -> str:
    if p == root:
        return os.path.basename(p)
    return p[len(root) :].lstrip("/") if p.startswith(root) else p


def read_file_batch(
    batch: pa.Table, max_bytes: int, license: str, source: str, tree: str | None = None
) -> pa.Table:
    """Read one block of listed files into raw rows; every failure becomes a drop reason."""
    rows: dict[str, list] = {k: [] for k in RAW_SCHEMA.names}
    for item in batch.to_pylist():
        path = os.fsdecode(item["file"])  # bytes from list_shard_batch, str from callers
        text, reason = read_one(path, item.get("size", -1), max_bytes, tree)
        rows["content"].append(text)
        rows["path"].append(item["rel"])
        rows["repo"].append(item["repo"])
        rows["license"].append(license)
        rows["source"].append(source)
        rows["drop"].append(reason or "")
    return pa.table(rows, schema=RAW_SCHEMA)


def read_one(
    path: str, size: int, max_bytes: int, tree: str | None = None
) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for one file; never raises or blocks for bad input.

    ``tree``: the real directory a local file must resolve into (None: no check).
    ``size``: the listed size, used for URIs (local files are sized by ``fstat``).
    """
    if "://" not in path:
        data, reason = listing.read_regular(path, tree, max_bytes)
        return (None, reason) if data is None else decode_bytes(data, max_bytes)
    if size > max_bytes:
        return None, "huge"
    try:
        fs, p = pafs.FileSystem.from_uri(path)
        with fs.open_input_stream(p) as f:
            data = f.read(max_bytes + 1)
    except (OSError, ValueError):
        return None, "unreadable"
    return decode_bytes(data, max_bytes)
