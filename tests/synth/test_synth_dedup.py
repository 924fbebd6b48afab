"""Mined exercises through the shared distributed near-dedup (ingest's MinHash/LSH on Ray).

Planted near-copies (one docstring word changed) and exact copies in other files must
collapse; the output must hold no pair at exact Jaccard >= the threshold; the cap is
counted; a repeated run gives the same rows.
"""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pandas as pd
from synth_fixtures import write_filtered

from phi_ray.config import load_config
from phi_ray.corpus.minhash import shingle_hashes
from phi_ray.runs import RunDir
from phi_ray.synth.stage import run as synth_run


def _function(rng: random.Random, name: str, doc: list[str]) -> str:
    body = "\n".join(
        f"    v{i} = x * {rng.randrange(100)} + {rng.randrange(100)}" for i in range(6)
    )
    return f'def {name}(x):\n    """{" ".join(doc)}."""\n{body}\n    return v5\n'


def _files(tmp: Path) -> list[Path]:
    """12 files of 4 distinct functions each; file k >= 6 also repeats a function of file
    k - 6 with one docstring word changed (near copy), and file 11 repeats one verbatim."""
    rng = random.Random(0)
    originals, paths = [], []
    for k in range(12):
        funcs = []
        for j in range(4):
            doc = [f"w{rng.randrange(10**6)}" for _ in range(40)]
            funcs.append(_function(rng, f"f{k}_{j}", doc))
        originals.append(funcs)
        extra = []
        if k >= 6:
            src = originals[k - 6][0]
            extra.append(src.replace("w", "z", 1).replace(f"def f{k - 6}_0", f"def g{k}"))
        if k == 11:
            extra.append(originals[0][1])
        p = tmp / f"mod{k}.py"
        p.write_text("\n\n".join(funcs + extra))
        paths.append(p)
    return paths


def _run(tmp_path: Path, name: str, files: list[Path], *extra: str):
    cfg = load_config(
        "tiny", [f"run.root={tmp_path / 'runs'}", f"run.name={name}", "synth.source=mined", *extra]
    )
    run = RunDir.from_config(cfg)
    write_filtered(run, files)
    res = synth_run(cfg, run)
    return cfg, res, pd.read_parquet(Path(res.path) / "exercises")


def test_mined_near_dedup_is_distributed_exact_and_repeatable(tmp_path, ray_session):
    src = tmp_path / "src"
    os.makedirs(src)
    files = _files(src)
    cap = "synth.n_exercises=40"  # below the 48 distinct rows: the cap must bite
    cfg, res, ex = _run(tmp_path, "a", files, cap)
    c = res.counts
    # 48 distinct + 6 near copies + 1 exact copy: 7 dropped as near duplicates, 8 by the cap.
    assert c["exercises_generated"] == 55
    assert c["exercises_drop_near_duplicate"] == 7, c
    assert c["exercises_drop_over_limit"] == 8, c
    assert c["exercises_kept"] == len(ex) == 40
    assert ex["id"].is_unique and ex["sample_index"].is_unique and (ex["tokens"] > 0).all()
    # No pair left at or above the threshold, by exact Jaccard on the same shingles.
    sets = [
        set(shingle_hashes(p + q, cfg.synth.dedup_ngram).tolist())
        for p, q in zip(ex["prompt"], ex["completion"], strict=True)
    ]
    for a, b in itertools.combinations(sets, 2):
        assert len(a & b) / len(a | b) < cfg.synth.near_dup_threshold

    # A repeated run (another run dir) keeps exactly the same rows.
    _, _, again = _run(tmp_path, "b", files, cap)
    key = ["sample_index"]
    pd.testing.assert_frame_equal(
        ex.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    )
