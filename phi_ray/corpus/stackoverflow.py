"""StackOverflow question/answer records -> one text sample per question.

Accepted record fields (JSONL, optionally ``.gz``, or Parquet), as in the Stack Exchange
dump and its common Hugging Face conversions:

* ``question_id`` or ``id``; ``title``; ``question`` or ``body`` (HTML or Markdown);
* ``answers``: a list of strings or of objects with ``body``/``text``, ``score`` and
  ``is_accepted``/``accepted``; or a single ``answer`` string;
* optional ``license`` (default CC-BY-SA-4.0) and ``tags``.

The sample is ``Question: <title>`` + the question + each answer (accepted first, then by
score), HTML turned into plain text with code blocks fenced. A line that is not JSON, is
nested deeper than the parser allows, or is a record without a question or with a field
of the wrong type (a list for a title, a string for a score) is dropped as
``bad_record``; a line longer than the cap is skipped unread as ``huge``; a question with
no answer is ``no_answer``. Dumps are untrusted input: the HTML is converted in linear time
(see :mod:`phi_ray.corpus.html_text`) and lines are read with a bounded buffer.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from phi_ray.corpus import listing
from phi_ray.corpus.html_text import html_to_text

SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
REPO = "stackoverflow.com"
DEFAULT_LICENSE = "CC-BY-SA-4.0"
RECORDS_PER_BATCH = 512
# A record is its sample plus JSON escaping and HTML markup: allow that much over the
# sample's own cap (``filters.max_bytes``) before a line is skipped unread.
LINE_OVERHEAD = 4
_SKIP_CHUNK = 1 << 20


class _BadRecord(Exception):
    """A field of the wrong type: the record is dropped as ``bad_record``."""


class _Skipped(str):
    """A line the reader did not parse; the value is its drop reason."""


def _text(rec: dict[str, Any], *keys: str) -> str:
    """The first of ``keys`` that is set, as a string ("" if none); other types are bad."""
    for k in keys:
        v = rec.get(k)
        if v is None or v == "":
            continue
        if not isinstance(v, str):
            raise _BadRecord(k)
        return v
    return ""


def _number(v: Any) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _BadRecord("score")
    try:
        return float(v) if v == v else 0.0  # NaN sorts as 0
    except OverflowError:  # a JSON int past a float's range (10**400)
        raise _BadRecord("score") from None


def _answers(rec: dict[str, Any]) -> list[str]:
    raw = rec.get("answers")
    if raw is None:
        one = _text(rec, "answer")
        raw = [one] if one else []
    if not isinstance(raw, list):
        raise _BadRecord("answers")
    items = []
    for a in raw:
        if isinstance(a, str):
            items.append((False, 0.0, a))
        elif isinstance(a, dict):
            accepted = a.get("is_accepted", a.get("accepted"))
            if accepted is not None and not isinstance(accepted, (bool, int)):
                raise _BadRecord("is_accepted")
            items.append((bool(accepted), _number(a.get("score")), _text(a, "body", "text")))
        elif a is not None:
            raise _BadRecord("answers")
    items.sort(key=lambda t: (not t[0], -t[1]))  # accepted first, then highest score
    return [html_to_text(b) for _, _, b in items if b.strip()]


def record_sample(rec: Any) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for one record; never raises."""
    if not isinstance(rec, dict):
        return None, "bad_record"
    try:
        title = _text(rec, "title").strip()
        question = html_to_text(_text(rec, "question", "body"))
        if not (title or question):
            return None, "bad_record"
        answers = _answers(rec)
    except _BadRecord:
        return None, "bad_record"
    if not answers:
        return None, "no_answer"
    parts = [f"Question: {title}" if title else "Question:", question]
    parts += [f"Answer:\n{a}" for a in answers]
    return "\n\n".join(p for p in parts if p), None


def records_to_table(recs: list[Any], where: list[str], source: str, license: str) -> pa.Table:
    """Raw rows (see :mod:`phi_ray.corpus.readers`) for a list of parsed records.

    A record may also be a :class:`_Skipped` reason (a line the reader did not parse).
    """
    from phi_ray.corpus.readers import RAW_SCHEMA

    rows: dict[str, list] = {k: [] for k in RAW_SCHEMA.names}
    for rec, loc in zip(recs, where, strict=True):
        text, reason = (None, rec) if isinstance(rec, _Skipped) else record_sample(rec)
        if text is not None and not _encodable(text):  # a JSON "\ud800" escape
            text, reason = None, "not_utf8"
        rows["content"].append(text)
        rows["path"].append(_label(_path(rec, loc)))
        rows["repo"].append(REPO)
        lic = rec.get("license") if isinstance(rec, dict) else None
        ok = isinstance(lic, str) and 0 < len(lic) < 200
        rows["license"].append(_label(lic) if ok else license)
        rows["source"].append(source)
        rows["drop"].append(reason or "")
    return pa.table(rows, schema=RAW_SCHEMA)


def _encodable(s: str) -> bool:
    """Whether Arrow can hold ``s``: JSON escapes can make lone surrogates, UTF-8 cannot."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _label(s: str) -> str:
    return s if _encodable(s) else s.encode("utf-8", "replace").decode("utf-8")


class _Unusable(OSError):
    """A local input that is not a regular file inside the tree (a FIFO, a link out)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _path(rec: Any, loc: str) -> str:
    if not isinstance(rec, dict):
        return loc
    qid = next((rec[k] for k in ("question_id", "id") if rec.get(k) is not None), None)
    ok = (isinstance(qid, int) and not isinstance(qid, bool)) or (
        isinstance(qid, str) and 0 < len(qid) <= 200
    )
    return f"questions/{qid}" if ok else loc  # 0 is a valid id


def _open(path: str, tree: str | None) -> io.BufferedIOBase:
    """A binary stream; local files must be regular files inside the tree (no FIFO)."""
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
        f: Any = io.BufferedReader(fs.open_input_stream(p))
    else:
        fd, reason = listing.open_regular(path, tree)
        if fd is None:
            raise _Unusable(reason)
        f = os.fdopen(fd, "rb")
    return gzip.open(f) if path.endswith(".gz") else f


def bounded_lines(f: Any, cap: int) -> Iterator[bytes | None]:
    """The stream's lines; None for a line over ``cap`` bytes, skipped without holding it."""
    while line := f.readline(cap + 1):
        if len(line) <= cap or line.endswith(b"\n"):
            yield line
            continue
        while (rest := f.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
            pass
        yield None


def parse_line(line: bytes) -> Any:
    """A JSON value, or None for anything json cannot or should not decode."""
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError, MemoryError):
        return None  # -> bad_record, counted, never a crash


def jsonl_batches(
    batch: pa.Table, source: str, license: str, max_bytes: int, tree: str | None = None
) -> Iterator[pa.Table]:
    """Stream JSONL files line by line, yielding bounded batches of raw rows."""
    cap = max_bytes * LINE_OVERHEAD
    for item in batch.to_pylist():
        path, name = item["file"], os.path.basename(item["file"])
        recs: list[Any] = []
        where: list[str] = []
        try:
            with _open(path, tree) as f:
                for lineno, line in enumerate(bounded_lines(f, cap), 1):
                    if line is not None and not line.strip():
                        continue
                    recs.append(_Skipped("huge") if line is None else parse_line(line))
                    where.append(f"{name}:{lineno}")
                    if len(recs) >= RECORDS_PER_BATCH:
                        yield records_to_table(recs, where, source, license)
                        recs, where = [], []
        except (OSError, EOFError, zlib.error) as e:  # unreadable, truncated or corrupt gzip
            reason = e.reason if isinstance(e, _Unusable) else "unreadable"
            recs.append(_Skipped(reason))
            where.append(f"{name}: {reason} ({type(e).__name__})")
        if recs:
            yield records_to_table(recs, where, source, license)


def parquet_file_batches(batch: pa.Table, source: str, license: str) -> Iterator[pa.Table]:
    """Stream each listed Parquet file of records, one file per task.

    Files are read one by one, not as one Ray Parquet dataset: Ray unifies every file's
    schema first, and one file with a differently typed column would fail them all.
    """
    from phi_ray.corpus.stack import open_parquet

    for path in batch.column("file").to_pylist():
        name = os.path.basename(path)
        try:
            for rb in open_parquet(path, None).iter_batches(batch_size=RECORDS_PER_BATCH):
                yield parquet_batch(pa.Table.from_batches([rb]), source, license, name)
        except (OSError, pa.ArrowException) as e:
            where = f"{name}: unreadable ({type(e).__name__})"
            yield records_to_table([_Skipped("unreadable")], [where], source, license)


def parquet_batch(batch: pa.Table, source: str, license: str, name: str = "parquet") -> pa.Table:
    """Records from Parquet rows; a row that does not convert (invalid UTF-8) is bad."""
    try:
        recs = batch.to_pylist()
    except (UnicodeDecodeError, pa.ArrowException):
        recs = [_row(batch, i) for i in range(batch.num_rows)]
    return records_to_table(recs, [name] * len(recs), source, license)


def _row(batch: pa.Table, i: int) -> Any:
    try:
        return batch.slice(i, 1).to_pylist()[0]
    except (UnicodeDecodeError, pa.ArrowException):
        return None


def read(src: Any, where: str, files: list[tuple[str, int]], max_bytes: int) -> Any:
    """A Ray Dataset of raw rows for a StackOverflow source."""
    import ray

    from phi_ray.corpus.readers import _root, source_name

    root = _root(src)
    tree = None if "://" in root else listing.tree_root(root)
    meta = {"source": source_name(src), "license": src.license or DEFAULT_LICENSE}
    parts = []
    jsonl = [{"file": f} for f, _ in files if not f.endswith(".parquet")]
    if jsonl:
        parts.append(
            ray.data.from_items(jsonl, override_num_blocks=len(jsonl)).map_batches(
                jsonl_batches,
                batch_format="pyarrow",
                batch_size=1,
                fn_kwargs={**meta, "max_bytes": max_bytes, "tree": tree},
            )
        )
    pq_files = [f for f, _ in files if f.endswith(".parquet")]
    if pq_files:
        items = [{"file": f} for f in pq_files]
        parts.append(
            ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                parquet_file_batches, batch_format="pyarrow", batch_size=1, fn_kwargs=meta
            )
        )
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return ds.limit(src.max_files) if src.max_files else ds
