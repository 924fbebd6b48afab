"""The Stack (dedup) Parquet layout -> raw rows, from disk, an object store or the hub.

Columns (The Stack v1 dedup): ``content``, ``max_stars_repo_path``, ``max_stars_repo_name``,
``max_stars_repo_licenses`` (or ``path`` / ``repo_name`` / ``licenses``), and more that
are not read. ``kind: hub`` reads the same files through ``HfFileSystem``
(``hf://datasets/<path>/<data_dir>``, ``HF_TOKEN`` from the environment) as parallel
Parquet reads: the driver lists files and reads one footer, Ray reads the rows.

Parquet is not trusted: a ``content`` column of binary or invalid UTF-8 (Parquet readers
do not validate it), NULs, or another type altogether gives each row a drop reason, and
metadata of the wrong type (an int ``path``) becomes text; nothing crashes the batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from phi_ray.config import SourceConfig
from phi_ray.corpus import listing
from phi_ray.corpus.filters import decode_bytes
from phi_ray.corpus.readers import RAW_SCHEMA, CorpusError, source_name

log = logging.getLogger("phi_ray.corpus")
ROWS_PER_BATCH = 1024  # rows per streamed record batch: a few MB of code
# Candidate column names per canonical field, in preference order (The Stack v1 dedup first).
STACK_COLUMNS = {
    "content": ("content", "text"),
    "path": ("max_stars_repo_path", "path", "max_issues_repo_path", "max_forks_repo_path"),
    "repo": ("max_stars_repo_name", "repo_name", "repo", "max_issues_repo_name"),
    "license": ("max_stars_repo_licenses", "licenses", "license", "max_issues_repo_licenses"),
}


def _stack_columns(names: list[str], where: str, first: str) -> dict[str, str | None]:
    """Map canonical fields to the columns present; ``content`` is required."""
    cols = {k: next((c for c in cands if c in names), None) for k, cands in STACK_COLUMNS.items()}
    if cols["content"] is None:
        raise CorpusError(
            f"{where}: {first} has no 'content' column (columns: {', '.join(names)}); "
            "expected The Stack's Parquet layout"
        )
    return cols


def read_stack(
    src: SourceConfig, where: str, files: list[str], filesystem: Any, max_bytes: int
) -> Any:
    """Stack-layout Parquet files (local, URIs, or paths on ``filesystem``) -> raw rows.

    Tasks list each file's row groups, then one task per row group streams it by record
    batches, so a few large files still spread over every CPU. The driver reads one
    footer (a clear error when the layout is not The Stack's) and no rows. Ray's own
    Parquet reader is not used because it unifies every file's schema first: one file
    with an int ``path`` or a binary ``content`` would fail them all.
    """
    import ray

    _check_layout(files, filesystem, where)
    meta = {"source": source_name(src), "license": src.license or "", "max_bytes": max_bytes}
    ds = ray.data.from_items([{"file": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(
        row_groups, batch_format="pyarrow", batch_size=1, fn_kwargs={"filesystem": filesystem}
    ).repartition(target_num_rows_per_block=1)
    ds = ds.map_batches(
        stack_row_group_batches,
        batch_format="pyarrow",
        batch_size=1,
        fn_kwargs={"filesystem": filesystem, **meta},
    )
    return ds.limit(src.max_files) if src.max_files else ds


def _check_layout(files: list[str], filesystem: Any, where: str) -> None:
    """The first readable file must be Stack-layout (a clear error for a wrong source);
    unreadable ones before it are left to the readers, which count them."""
    first_error = None
    for path in files:
        try:
            names = open_parquet(path, filesystem).schema_arrow.names
        except (OSError, pa.ArrowException) as e:
            first_error = first_error or f"{path}: {e}"
            continue
        _stack_columns(names, where, path)
        return
    raise CorpusError(f"{where}: no readable Parquet file (first error: {first_error})")


def open_parquet(path: str, filesystem: Any) -> Any:
    """A ``pq.ParquetFile`` on ``filesystem`` (fsspec), a URI, or a local regular file."""
    import pyarrow.parquet as pq

    if filesystem is not None:
        return pq.ParquetFile(filesystem.open(path, "rb"))
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
        return pq.ParquetFile(fs.open_input_file(p))
    fd, reason = listing.open_regular(path, None)  # a FIFO must not block the task
    if fd is None:
        raise OSError(f"{path}: {reason}")
    return pq.ParquetFile(os.fdopen(fd, "rb"))


def row_groups(batch: pa.Table, filesystem: Any) -> pa.Table:
    """Files -> (file, row group) items; row group -1 for a file that is not Parquet."""
    files, groups = [], []
    for path in batch.column("file").to_pylist():
        try:
            found = list(range(open_parquet(path, filesystem).num_row_groups))
        except (OSError, pa.ArrowException) as e:
            log.warning("%s: unreadable Parquet (%s: %s)", path, type(e).__name__, e)
            found = [-1]  # one row for it, counted as unreadable by the reader
        files += [path] * len(found)
        groups += found
    return pa.table({"file": files, "rg": pa.array(groups, pa.int64())})


def stack_row_group_batches(
    batch: pa.Table, filesystem: Any, source: str, license: str, max_bytes: int
) -> Iterator[pa.Table]:
    """Stream row groups as raw rows, ``ROWS_PER_BATCH`` at a time.

    A file that is not Stack-layout Parquet, or breaks while being read, adds one
    ``unreadable`` row named after it (the rows read before the break are kept).
    """
    for path, rg in zip(batch["file"].to_pylist(), batch["rg"].to_pylist(), strict=True):
        try:
            if rg >= 0:  # -1: the listing task found no Parquet (and said why)
                pf = open_parquet(path, filesystem)
                cols = _stack_columns(pf.schema_arrow.names, "", path)
                wanted = sorted({c for c in cols.values() if c})
                for rb in pf.iter_batches(ROWS_PER_BATCH, row_groups=[rg], columns=wanted):
                    t = pa.Table.from_batches([rb])
                    yield stack_batch(t, cols, source, license, max_bytes)
                continue
        # KeyError: a column name the file holds twice (Table.column refuses to choose)
        except (OSError, pa.ArrowException, CorpusError, KeyError) as e:
            log.warning("%s: unreadable Parquet (%s: %s)", path, type(e).__name__, e)
        row = {"content": None, "path": path, "repo": "", "license": license}
        yield pa.Table.from_pylist([{**row, "source": source, "drop": "unreadable"}], RAW_SCHEMA)


def stack_batch(
    batch: pa.Table, cols: dict[str, str | None], source: str, license: str, max_bytes: int
) -> pa.Table:
    """Stack-layout columns -> raw rows; every row is type-checked.

    ``content`` may be a string or binary column and may hold anything (invalid UTF-8,
    NULs, another type entirely): each row gets its own drop reason. Metadata columns
    of the wrong type (an int ``path``) are turned into text, not trusted as strings.
    """
    n = batch.num_rows
    content, drop = [], []
    name = cols.get("content")
    for text, reason in _texts(batch.column(name), max_bytes) if name else [(None, None)] * n:
        content.append(text)
        drop.append(reason or "")

    def col(field: str, default: str) -> list[str]:
        name = cols.get(field)
        return _labels(batch.column(name), default) if name else [default] * n

    return pa.table(
        {
            "content": content,
            "path": col("path", ""),
            "repo": col("repo", ""),
            "license": col("license", license),
            "source": [source] * n,
            "drop": drop,
        },
        schema=RAW_SCHEMA,
    )


def _as_bytes(arr: pa.ChunkedArray) -> list | None:
    """The values of a string-like or binary column as bytes (no UTF-8 trust), else None."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    t = arr.type
    if pa.types.is_null(t):
        return [None] * len(arr)
    if not (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or getattr(pa.types, "is_string_view", lambda _: False)(t)
        or getattr(pa.types, "is_binary_view", lambda _: False)(t)
    ):
        return None
    # Casting to binary never validates UTF-8: a string column holding invalid bytes
    # (Parquet readers do not check) is read as the bytes it is.
    return arr.cast(pa.large_binary()).to_pylist()


def _texts(arr: pa.ChunkedArray, max_bytes: int) -> list[tuple[str | None, str | None]]:
    raw = _as_bytes(arr)
    if raw is None:  # ints, lists, structs...: no row of this file is text
        return [(None, "bad_record") for _ in range(len(arr))]
    return [(None, None) if b is None else decode_bytes(b, max_bytes) for b in raw]


def _labels(arr: pa.ChunkedArray, default: str) -> list[str]:
    """Metadata as text whatever its type; lists (licenses) joined with commas."""
    raw = _as_bytes(arr)
    if raw is not None:
        return [default if b is None else b.decode("utf-8", "replace") for b in raw]
    out = []
    for v in arr.to_pylist():
        if v is None:
            out.append(default)
        elif isinstance(v, list):
            out.append(",".join(_label(x) for x in v if x is not None) or default)
        else:
            out.append(_label(v))
    return out


def _label(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)[:1000]  # a struct or map stays a bounded label


# --------------------------------------------------------------------------- hub


def hub_filesystem() -> Any:
    """``HfFileSystem`` with ``HF_TOKEN`` from the environment (The Stack is gated)."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem(token=os.environ.get("HF_TOKEN"))


def hub_base(src: SourceConfig) -> str:
    """``bigcode/the-stack-dedup`` + ``data/python`` -> ``datasets/bigcode/...``."""
    path = src.path.removeprefix("hf://").strip("/")
    if not path.startswith(("datasets/", "models/", "spaces/")):
        path = f"datasets/{path}"
    return f"{path}/{src.data_dir.strip('/')}" if src.data_dir else path


def read_hub(src: SourceConfig, where: str, max_bytes: int, filesystem: Any = None) -> Any:
    """A Stack-layout dataset on the Hugging Face hub as parallel Parquet reads.

    ``filesystem``: any fsspec filesystem holding the hub's layout (tests pass a local
    one); default :func:`hub_filesystem`. The driver lists Parquet files only.
    """
    fs = filesystem if filesystem is not None else hub_filesystem()
    base = hub_base(src)
    try:
        files = sorted(p for p in fs.find(base) if p.endswith(".parquet"))
    except Exception as e:  # hub errors come in many types: offline, gated, no such repo
        raise CorpusError(
            f"{where}: cannot list hf://{base} on the Hugging Face hub "
            f"({type(e).__name__}: {e}). Check the network and HF_TOKEN (The Stack is gated), "
            "or download the Parquet files and use kind: stack_parquet"
        ) from None
    if not files:
        raise CorpusError(f"{where}: no .parquet files under hf://{base}")
    return read_stack(src, where, files, fs, max_bytes)
