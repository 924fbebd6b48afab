"""StackOverflow question/answer records -> one text sample per question.

Accepted record fields (JSONL, optionally ``.gz``, or Parquet), as in the Stack Exchange
dump and its common Hugging Face conversions:

* ``question_id`` or ``id``; ``title``; ``question`` or ``body`` (HTML or Markdown);
* ``answers``: a list of strings or of objects with ``body``/``text``, ``score`` and
  ``is_accepted``/``accepted``; or a single ``answer`` string;
* optional ``license`` (default CC-BY-SA-4.0) and ``tags``.

The sample is ``Question: <title>`` + the question + each answer (accepted first, then by
score), HTML turned into plain text with code blocks fenced. A line that is not JSON, or a
record without a question, is dropped as ``bad_record``; a question with no answer as
``no_answer``.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
REPO = "stackoverflow.com"
DEFAULT_LICENSE = "CC-BY-SA-4.0"
RECORDS_PER_BATCH = 512

_PRE = re.compile(r"<pre[^>]*>\s*(?:<code[^>]*>)?(.*?)(?:</code>)?\s*</pre>", re.S | re.I)
_CODE = re.compile(r"<code[^>]*>(.*?)</code>", re.S | re.I)
_BREAK = re.compile(r"<br\s*/?>|</p>|</li>|</h\d>", re.I)
_TAG = re.compile(r"<[^>]+>")
_HTML_HINT = re.compile(r"</?(p|pre|code|br|a|ul|ol|li|blockquote|h\d|em|strong)\b", re.I)


def html_to_text(s: str) -> str:
    """Stack Exchange HTML -> Markdown-ish text; plain text passes through unchanged."""
    if not _HTML_HINT.search(s):
        return s.strip()
    s = _PRE.sub(lambda m: "\n```\n" + _TAG.sub("", m.group(1)).strip("\n") + "\n```\n", s)
    s = _CODE.sub(lambda m: "`" + m.group(1) + "`", s)
    s = _BREAK.sub("\n", s)
    s = html.unescape(_TAG.sub("", s))
    return re.sub(r"\n{3,}", "\n\n", s).strip()


def _answers(rec: dict[str, Any]) -> list[str]:
    raw = rec.get("answers")
    if raw is None and rec.get("answer"):
        raw = [rec["answer"]]
    items = []
    for a in raw or []:
        if isinstance(a, str):
            items.append((False, 0, a))
        elif isinstance(a, dict):
            body = a.get("body") or a.get("text") or ""
            accepted = bool(a.get("is_accepted") or a.get("accepted"))
            items.append((accepted, a.get("score") or 0, body))
    items.sort(key=lambda t: (not t[0], -t[1]))  # accepted first, then highest score
    return [html_to_text(b) for _, _, b in items if b and b.strip()]


def record_sample(rec: Any) -> tuple[str | None, str | None]:
    """(text, None) or (None, reason) for one record."""
    if not isinstance(rec, dict):
        return None, "bad_record"
    title = (rec.get("title") or "").strip()
    question = html_to_text(rec.get("question") or rec.get("body") or "")
    if not (title or question):
        return None, "bad_record"
    answers = _answers(rec)
    if not answers:
        return None, "no_answer"
    parts = [f"Question: {title}" if title else "Question:", question]
    parts += [f"Answer:\n{a}" for a in answers]
    return "\n\n".join(p for p in parts if p), None


def records_to_table(recs: list[Any], where: list[str], source: str, license: str) -> pa.Table:
    """Raw rows (see :mod:`phi_ray.corpus.readers`) for a list of parsed records."""
    from phi_ray.corpus.readers import RAW_SCHEMA

    rows: dict[str, list] = {k: [] for k in RAW_SCHEMA.names}
    for rec, loc in zip(recs, where, strict=True):
        text, reason = record_sample(rec)
        qid = _first(rec, "question_id", "id") if isinstance(rec, dict) else None
        rows["content"].append(text)
        rows["path"].append(f"questions/{qid}" if qid is not None else loc)
        rows["repo"].append(REPO)
        lic = rec.get("license") if isinstance(rec, dict) else None
        rows["license"].append(lic if isinstance(lic, str) and lic else license)
        rows["source"].append(source)
        rows["drop"].append(reason or "")
    return pa.table(rows, schema=RAW_SCHEMA)


def _first(rec: dict[str, Any], *keys: str) -> Any:
    return next((rec[k] for k in keys if rec.get(k) is not None), None)  # 0 is a valid id


def _open(path: str):
    if "://" in path:
        fs, p = pafs.FileSystem.from_uri(path)
        f = fs.open_input_stream(p)
    else:
        f = open(path, "rb")
    return gzip.open(f) if path.endswith(".gz") else f


def jsonl_batches(batch: pa.Table, source: str, license: str) -> Iterator[pa.Table]:
    """Stream JSONL files line by line, yielding bounded batches of raw rows."""
    for item in batch.to_pylist():
        path, name = item["file"], os.path.basename(item["file"])
        recs, where = [], []
        try:
            with _open(path) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        recs.append(json.loads(line))
                    except (ValueError, UnicodeDecodeError):
                        recs.append(None)  # -> bad_record, counted, never a crash
                    where.append(f"{name}:{lineno}")
                    if len(recs) >= RECORDS_PER_BATCH:
                        yield records_to_table(recs, where, source, license)
                        recs, where = [], []
        except (OSError, EOFError) as e:  # unreadable or truncated gzip: keep what was read
            recs.append(None)
            where.append(f"{name}: unreadable ({type(e).__name__})")
        if recs:
            yield records_to_table(recs, where, source, license)


def parquet_batch(batch: pa.Table, source: str, license: str) -> pa.Table:
    recs = batch.to_pylist()
    return records_to_table(recs, ["parquet"] * len(recs), source, license)


def read(src: Any, where: str, files: list[tuple[str, int]]) -> Any:
    """A Ray Dataset of raw rows for a StackOverflow source."""
    import ray

    from phi_ray.corpus.readers import source_name

    meta = {"source": source_name(src), "license": src.license or DEFAULT_LICENSE}
    parts = []
    jsonl = [{"file": f} for f, _ in files if not f.endswith(".parquet")]
    if jsonl:
        parts.append(
            ray.data.from_items(jsonl, override_num_blocks=len(jsonl)).map_batches(
                jsonl_batches, batch_format="pyarrow", batch_size=1, fn_kwargs=meta
            )
        )
    pq_files = [f for f, _ in files if f.endswith(".parquet")]
    if pq_files:
        parts.append(
            ray.data.read_parquet(pq_files).map_batches(
                parquet_batch, batch_format="pyarrow", fn_kwargs=meta
            )
        )
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    return ds.limit(src.max_files) if src.max_files else ds
