"""Shared helpers of the synth tests: a score/filtered fixture from real stdlib files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from phi_ray.runs import RunDir


def write_filtered(run: RunDir, files: list[Path]) -> list[dict]:
    """Mark the score stage complete with ``filtered/`` holding ``files`` (contract schema)."""
    rows = []
    for p in files:
        content = p.read_text(encoding="utf-8", errors="replace")
        rows.append(
            {
                "id": hashlib.sha256(content.encode()).hexdigest(),
                "content": content,
                "path": str(p),
                "repo": "cpython",
                "license": "PSF-2.0",
                "source": "stdlib",
                "n_chars": len(content),
                "n_tokens": len(content) // 4,
                "quality": 0.9,
            }
        )
    with run.stage("score", "fixture") as out:
        os.makedirs(os.path.join(out.tmp, "filtered"))
        df = pd.DataFrame(rows)
        half = len(df) // 2
        df.iloc[:half].to_parquet(os.path.join(out.tmp, "filtered", "part-0.parquet"))
        df.iloc[half:].to_parquet(os.path.join(out.tmp, "filtered", "part-1.parquet"))
        out.finish(counts={"kept": len(rows)})
    return rows
