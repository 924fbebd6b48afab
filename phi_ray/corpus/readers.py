"""Readers: every source becomes a Ray Dataset of raw rows in one schema.

Raw rows are ``content`` (null when the input could not be used), ``path``, ``repo``,
``license``, ``source`` and ``drop`` (``""``, or the reason the input is unusable; see
:mod:`phi_ray.corpus.filters`). File contents are read inside Ray tasks: the driver only
lists paths (or Parquet fragments), it never holds the corpus.

Sources (``corpus.sources[*].kind``):

* ``stack_parquet``: The Stack (dedup) Parquet layout, a local directory or an object-store
  URI: ``content``, ``max_stars_repo_path``, ``max_stars_repo_name``,
  ``max_stars_repo_licenses`` (or ``path`` / ``repo_name`` / ``licenses``), ...
* ``hub``: the same layout streamed from the Hugging Face hub with ``datasets``.
* ``stackoverflow``: question/answer records (JSONL, optionally gzipped, or Parquet); see
  :mod:`phi_ray.corpus.stackoverflow`.
* ``local_dir`` / ``stdlib``: a tree of ``.py`` files; ``stdlib`` is the running Python's
  standard library without its tests, so the tiny preset needs no download.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from phi_ray.config import SourceConfig, resolve_path
from phi_ray.corpus import stackoverflow
from phi_ray.corpus.filters import decode_bytes

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
# Candidate column names per canonical field, in preference order (The Stack v1 dedup first).
STACK_COLUMNS = {
    "content": ("content", "text"),
    "path": ("max_stars_repo_path", "path", "max_issues_repo_path", "max_forks_repo_path"),
    "repo": ("max_stars_repo_name", "repo_name", "repo", "max_issues_repo_name"),
    "license": ("max_stars_repo_licenses", "licenses", "license", "max_issues_repo_licenses"),
}
_DEFAULT_NAME = {
    "stack_parquet": "the-stack",
    "hub": "the-stack",
    "stackoverflow": "stackoverflow",
    "local_dir": "local",
    "stdlib": "stdlib",
}
_DEFAULT_LICENSE = {"stdlib": "PSF-2.0", "stackoverflow": "CC-BY-SA-4.0", "local_dir": "unknown"}
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
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
        return _read_stack(src, where)
    if src.kind == "stackoverflow":
        return stackoverflow.read(src, where, _list(src, where, stackoverflow.SUFFIXES))
    if src.kind == "hub":
        return _read_hub(src, where)
    raise CorpusError(f"{where}: unknown source kind {src.kind!r}")


# --------------------------------------------------------------------------- listing


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _list(src: SourceConfig, where: str, suffixes: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, size) of the source's input files, sorted; a clear error if there are none."""
    root = stdlib_root() if src.kind == "stdlib" else resolve_path(src.path)
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
    if not os.path.exists(root):
        raise CorpusError(f"{where}: {root} does not exist")
    if os.path.isfile(root):
        return [(root, os.path.getsize(root))]
    out = []
    for d, dirs, names in os.walk(root):
        if skip_tests:
            dirs[:] = [x for x in dirs if x not in _EXCLUDED_DIRS]
        for n in names:
            if n.endswith(suffixes):
                p = os.path.join(d, n)
                try:
                    size = os.stat(p).st_size
                except OSError:  # dangling link, vanished file: the reader reports it
                    size = -1
                out.append((p, size))
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
    import ray

    files = _list(src, where, (".py",))
    root = stdlib_root() if src.kind == "stdlib" else resolve_path(src.path)
    if src.kind == "stdlib":
        repo = f"cpython/Lib@{sys.version_info.major}.{sys.version_info.minor}"
    else:
        repo = os.path.basename(os.path.normpath(root.split("://")[-1])) or root
    items = [{"file": p, "size": s, "rel": _relpath(p, root), "repo": repo} for p, s in files]
    meta = {"license": src.license or _DEFAULT_LICENSE[src.kind], "source": source_name(src)}
    blocks = max(1, -(-len(items) // FILES_PER_BLOCK))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        read_file_batch,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"max_bytes": max_bytes, **meta},
    )


def _relpath(p: str, root: str) -> str:
    if p == root:
        return os.path.basename(p)
    return p[len(root) :].lstrip("/") if p.startswith(root) else p


def read_file_batch(batch: pa.Table, max_bytes: int, license: str, source: str) -> pa.Table:
    """Read one block of listed files into raw rows; every failure becomes a drop reason."""
    rows: dict[str, list] = {k: [] for k in RAW_SCHEMA.names}
    for item in batch.to_pylist():
        text, reason = read_one(item["file"], item["size"], max_bytes)
        rows["content"].append(text)
        rows["path"].append(item["rel"])
        rows["repo"].append(item["repo"])
        rows["license"].append(license)
        rows["source"].append(source)
        rows["drop"].append(reason or "")
    return pa.table(rows, schema=RAW_SCHEMA)


def read_one(path: str, size: int, max_bytes: int) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for one file; never raises for bad input."""
    if size > max_bytes:
        return None, "huge"  # not read at all: a 5 GB "x.py" must not reach memory
    try:
        if "://" in path:
            fs, p = pafs.FileSystem.from_uri(path)
            with fs.open_input_stream(p) as f:
                data = f.read(max_bytes + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
    except (OSError, ValueError):
        return None, "unreadable"
    return decode_bytes(data, max_bytes)


# --------------------------------------------------------------------------- The Stack


def _stack_columns(names: list[str], where: str, first: str) -> dict[str, str | None]:
    """Map canonical fields to the columns present; ``content`` is required."""
    cols = {k: next((c for c in cands if c in names), None) for k, cands in STACK_COLUMNS.items()}
    if cols["content"] is None:
        raise CorpusError(
            f"{where}: {first} has no 'content' column (columns: {', '.join(names)}); "
            "expected The Stack's Parquet layout"
        )
    return cols


def _read_stack(src: SourceConfig, where: str) -> Any:
    import pyarrow.parquet as pq
    import ray

    files = _list(src, where, (".parquet",))
    first = files[0][0]
    try:
        fs, p = pafs.FileSystem.from_uri(first) if "://" in first else (None, first)
        names = pq.read_schema(p, filesystem=fs).names
    except (OSError, pa.ArrowInvalid) as e:
        raise CorpusError(f"{where}: cannot read Parquet schema of {first}: {e}") from None
    cols = _stack_columns(names, where, first)
    paths = [f for f, _ in files]
    ds = ray.data.read_parquet(paths, columns=sorted({c for c in cols.values() if c}))
    if src.max_files:
        ds = ds.limit(src.max_files)
    meta = {"source": source_name(src), "license": src.license or ""}
    return ds.map_batches(stack_batch, batch_format="pyarrow", fn_kwargs={"cols": cols, **meta})


def stack_batch(
    batch: pa.Table, cols: dict[str, str | None], source: str, license: str
) -> pa.Table:
    """Stack-layout columns -> raw rows (license lists joined with commas)."""
    n = batch.num_rows

    def col(field: str, default: str) -> list:
        name = cols.get(field)
        return batch.column(name).to_pylist() if name else [default] * n

    lic = [
        ",".join(map(str, v)) if isinstance(v, list) else (v or license)
        for v in col("license", license)
    ]
    return pa.table(
        {
            "content": col("content", ""),
            "path": [p or "" for p in col("path", "")],
            "repo": [r or "" for r in col("repo", "")],
            "license": lic,
            "source": [source] * n,
            "drop": [""] * n,
        },
        schema=RAW_SCHEMA,
    )


# --------------------------------------------------------------------------- hub


def _read_hub(src: SourceConfig, where: str) -> Any:
    """Stream a Stack-layout dataset from the Hugging Face hub (needs ``datasets``)."""
    import ray

    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"{where}: kind=hub needs the optional 'datasets' package "
            "(pip install 'phi-ray[hub]'); offline, download the Parquet files and use "
            "kind: stack_parquet with path: <that directory>"
        ) from None
    try:
        ds = datasets.load_dataset(src.path, data_dir=src.data_dir, split="train", streaming=True)
        names = list(ds.features) if ds.features else list(next(iter(ds.take(1))))
    except Exception as e:  # datasets raises many types for "no network" / "gated" / "no such"
        raise CorpusError(
            f"{where}: cannot stream {src.path!r} from the Hugging Face hub "
            f"({type(e).__name__}: {e}). Check the network and HF_TOKEN (The Stack is gated), "
            "or download the Parquet files and use kind: stack_parquet"
        ) from None
    cols = _stack_columns(names, where, src.path)
    if src.max_files:
        ds = ds.take(src.max_files)
    meta = {"source": source_name(src), "license": src.license or ""}
    return ray.data.from_huggingface(ds).map_batches(
        stack_batch, batch_format="pyarrow", fn_kwargs={"cols": cols, **meta}
    )
