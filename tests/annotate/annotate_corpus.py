"""Test helper: a small corpus/ in a run directory, as the ingest stage writes it."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import stdlib_python_files


def write_corpus(run, n: int, rare_every: int = 0, files_per_part: int = 500) -> list[str]:
    """Write ``n`` real stdlib files as ``ingest/corpus/*.parquet``, marked complete.

    ``rare_every``: every k-th row gets source "rare" (to test stratification). Returns the ids.
    """
    rows, seen = [], set()
    files = stdlib_python_files()
    for i in range(10 * n):
        p = files[i % len(files)]
        text = p.read_text(encoding="utf-8", errors="replace")
        if i >= len(files):  # more rows than stdlib files: distinct variants of real files
            text += f"\n# variant {i // len(files)}\n"
        rid = hashlib.sha256(text.encode()).hexdigest()
        if len(text) < 100 or rid in seen:
            continue
        seen.add(rid)
        src = "rare" if rare_every and i % rare_every == 0 else "stdlib"
        rows.append(
            {
                "id": rid,
                "content": text,
                "path": str(p),
                "repo": "cpython",
                "license": "PSF-2.0",
                "source": src,
                "n_chars": len(text),
                "n_tokens": len(text) // 4,
            }
        )
        if len(rows) == n:
            break
    assert len(rows) == n, f"only {len(rows)} stdlib files available"
    with run.stage("ingest", "fixture") as out:
        out_dir = f"{out.tmp}/corpus"
        run.fs.create_dir(out_dir, recursive=True)
        for k in range(0, n, files_per_part):
            table = pa.Table.from_pylist(rows[k : k + files_per_part])
            pq.write_table(table, f"{out_dir}/part-{k // files_per_part:05d}.parquet")
        out.finish(counts={"files_out": n})
    return [r["id"] for r in rows]
