"""The ablation's training sets: one run's corpus split into arms of equal token count.

Every corpus file ``i`` (``ingest/corpus``) has its scores in ``score/scored/part-i``; one
Ray task per file joins the two and writes that file's rows of each arm as Parquet:

- ``heldout``: a seeded random ``holdout_fraction`` of the corpus, in no arm, every arm's
  validation set (so an arm is measured on the corpus it came from, not only on HumanEval);
- ``filtered``: the classifier's kept files;
- ``random``: a seeded uniform sample of the unfiltered corpus, ``random_oversample`` x the
  kept fraction, so it has at least as many tokens as ``filtered`` in expectation;
- ``lowest``: the lowest-scored files, as many as were kept. Its score cut-off comes from a
  histogram of the scores summed over files (a first pass of small tasks), so no process
  holds the corpus's scores.

Each arm is packed by the pack stage's own :func:`phi_ray.packing.stage.pack_dataset`
(all of it to ``train/``), then every arm is cut to the smallest arm's window count
(:func:`truncate_windows`). Windows are in the pack's seeded document order, so the first
``n`` windows are a uniform sample of the arm's documents: equal tokens, exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from phi_ray.config import Config
from phi_ray.runs import RunDir, resolve_fs

HIST_BINS = 4096  # quality is a probability in [0, 1]; bin width ~2.4e-4
HELDOUT = "heldout"


def unit(seed: int, salt: str, ids: list[str]) -> np.ndarray:
    """A uniform draw in [0, 1) per id, a pure function of (seed, salt, id)."""
    out = np.empty(len(ids), dtype=np.float64)
    for k, i in enumerate(ids):
        h = hashlib.sha256(f"{seed}:{salt}:{i}".encode()).digest()
        out[k] = (int.from_bytes(h[:8], "big") >> 11) / 2.0**53
    return out


def _read(path: str, columns: list[str]) -> pa.Table:
    fs, p = resolve_fs(path)
    return pq.read_table(p, filesystem=fs, columns=columns)


def _histogram(scored: str, seed: int, holdout: float) -> dict[str, Any]:
    """Ray task: the non-held-out scores of one file as a histogram, and its kept count."""
    t = _read(scored, ["id", "quality", "kept"])
    ids = [str(i) for i in t.column("id").to_pylist()]
    train = unit(seed, HELDOUT, ids) >= holdout
    q = t.column("quality").to_numpy(zero_copy_only=False).astype(np.float64)[train]
    kept = t.column("kept").to_numpy(zero_copy_only=False)[train]
    hist, _ = np.histogram(np.clip(q, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))
    return {"hist": hist.astype(np.int64), "kept": int(kept.sum()), "rows": int(train.sum())}


def lowest_cutoff(hist: np.ndarray, n_kept: int) -> float:
    """The smallest bin edge below which at least ``n_kept`` scores fall (ties at the edge
    all go in: the arm may hold a few more files; equalising tokens makes that harmless)."""
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, max(n_kept, 1)))
    return float((min(b, HIST_BINS - 1) + 1) / HIST_BINS)


def _split_one(
    corpus: str, scored: str, i: int, out_root: str, arms: list[str], sel: dict[str, Any]
) -> dict[str, dict[str, int]]:
    """Ray task: one corpus file's rows of each arm -> ``<out_root>/<arm>/part-i.parquet``."""
    c = _read(corpus, ["id", "content", "n_tokens"])
    s = _read(scored, ["id", "quality", "kept"])
    s = s.set_column(0, "id", s.column("id").cast(c.schema.field("id").type))
    j = c.join(s, "id", join_type="inner")
    ids = [str(x) for x in j.column("id").to_pylist()]
    train = unit(sel["seed"], HELDOUT, ids) >= sel["holdout"]
    q = j.column("quality").to_numpy(zero_copy_only=False).astype(np.float64)
    masks = {
        HELDOUT: ~train,
        "filtered": train & j.column("kept").to_numpy(zero_copy_only=False),
        "random": train & (unit(sel["seed"], "random", ids) < sel["random_p"]),
        "lowest": train & (q < sel["lowest_cutoff"]),
    }
    counts = {}
    for arm in [HELDOUT, *arms]:
        rows = j.filter(pa.array(masks[arm])).select(["id", "content", "n_tokens"])
        fs, d = resolve_fs(f"{out_root}/{arm}")
        fs.create_dir(d, recursive=True)
        pq.write_table(rows, f"{d}/part-{i:05d}.parquet", filesystem=fs)
        n_tok = int(np.sum(rows.column("n_tokens").to_numpy(zero_copy_only=False)))
        counts[arm] = {"docs": rows.num_rows, "corpus_tokens": n_tok}
    return counts


def corpus_files(run: RunDir) -> list[tuple[str, str]]:
    """(corpus file, its scores) pairs, as the score stage numbered them."""
    from phi_ray.quality import data

    files = data.list_parquet(run.path("ingest", "corpus"), "ablate: ingest corpus")
    pairs = [(f, run.path("score", "scored", f"part-{i:05d}.parquet")) for i, f in enumerate(files)]
    fs = run.fs
    for _, s in pairs:
        if fs.get_file_info(run._fs_path(s)).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"ablate: {s} is missing; rerun `phi-ray score`")
    return pairs


def split_arms(cfg: Config, run: RunDir, out_root: str) -> dict[str, Any]:
    """Write each arm's (and the held-out set's) Parquet files; returns counts and cut-offs."""
    import ray

    a = cfg.ablate
    pairs = corpus_files(run)
    hist_task = ray.remote(num_cpus=1)(_histogram)
    parts = ray.get([hist_task.remote(s, cfg.run.seed, a.holdout_fraction) for _, s in pairs])
    hist = np.sum([p["hist"] for p in parts], axis=0) if parts else np.zeros(HIST_BINS, np.int64)
    n_kept, n_rows = sum(p["kept"] for p in parts), sum(p["rows"] for p in parts)
    sel = {
        "seed": cfg.run.seed,
        "holdout": a.holdout_fraction,
        "random_p": min(1.0, a.random_oversample * n_kept / max(n_rows, 1)),
        "lowest_cutoff": lowest_cutoff(hist, n_kept),
    }
    split_task = ray.remote(num_cpus=1)(_split_one)
    refs = [split_task.remote(c, s, i, out_root, a.arms, sel) for i, (c, s) in enumerate(pairs)]
    counts: dict[str, dict[str, int]] = {}
    for r in ray.get(refs):
        for arm, cnt in r.items():
            acc = counts.setdefault(arm, {"docs": 0, "corpus_tokens": 0})
            for k, v in cnt.items():
                acc[k] += v
    for arm, cnt in counts.items():
        if arm != HELDOUT and cnt["docs"] == 0:
            raise ValueError(f"ablate: arm '{arm}' has no file (selection {sel}); more corpus?")
    return {"selection": sel, "kept": n_kept, "rows": n_rows, "arms": counts}


def pack_arm(cfg: Config, run: RunDir, name: str, src_dir: str, out_root: str) -> dict:
    """Pack one arm's Parquet files with the pack stage's code, all of it into ``train/``."""
    from phi_ray.packing.stage import Source, pack_dataset
    from phi_ray.quality import data

    files = data.list_parquet(src_dir, f"ablate arm {name}")
    if not files:
        raise FileNotFoundError(f"ablate: arm '{name}' has no file in {src_dir}")
    whole = dataclasses.replace(cfg, pack=dataclasses.replace(cfg.pack, val_fraction=0.0))
    return pack_dataset(whole, run, [Source(name, files, "content")], out_root)["train"]


def truncate_windows(split_dir: str, n: int) -> dict[str, Any]:
    """Keep the first ``n`` windows of a packed split, in place; returns the new manifest.

    Whole shards past ``n`` are deleted and the shard holding window ``n`` is rewritten, so
    at most one shard passes through this process.
    """
    fs, base = resolve_fs(split_dir)
    with fs.open_input_stream(f"{base}/manifest.json") as f:
        m = json.loads(f.read().decode())
    if n > m["n_windows"]:
        raise ValueError(f"{split_dir}: {m['n_windows']} windows, cannot keep {n}")
    kept, left = [], n
    for s in m["shards"]:
        path = f"{base}/{s['file']}"
        if left <= 0:
            fs.delete_file(path)
            continue
        if s["n_windows"] > left:
            with fs.open_input_file(path) as f:
                arr = np.load(io.BytesIO(f.read()))[:left]
            with fs.open_output_stream(path) as f:
                np.save(f, np.ascontiguousarray(arr))
            s = {**s, "n_windows": left}
        kept.append(s)
        left -= s["n_windows"]
    m.update(
        shards=kept,
        n_windows=n,
        n_tokens=n * m["seq_len"],
        truncated_from=m["n_windows"],
        sources_note="sources counts are of the arm before truncation",
    )
    with fs.open_output_stream(f"{base}/manifest.json") as f:
        f.write(json.dumps(m, indent=1, sort_keys=True).encode())
    return m


def build(cfg: Config, run: RunDir, out_root: str) -> dict[str, Any]:
    """Split, pack and equalise every arm under ``out_root``; the data's summary.

    ``<out_root>/<arm>/train/`` holds each arm's equal windows, ``<out_root>/heldout/train/``
    the held-out windows; ``<out_root>/src/`` the Parquet files they came from.
    """
    info = split_arms(cfg, run, f"{out_root}/src")
    heldout = pack_arm(cfg, run, HELDOUT, f"{out_root}/src/{HELDOUT}", f"{out_root}/{HELDOUT}")
    packed = {
        arm: pack_arm(cfg, run, arm, f"{out_root}/src/{arm}", f"{out_root}/{arm}")
        for arm in cfg.ablate.arms
    }
    n = min(m["n_windows"] for m in packed.values())
    for arm in cfg.ablate.arms:
        truncate_windows(f"{out_root}/{arm}/train", n)
        info["arms"][arm]["packed_windows"] = packed[arm]["n_windows"]
    info["equal_windows"] = n
    info["equal_tokens"] = n * cfg.pack.seq_len
    info["heldout_windows"] = heldout["n_windows"]
    return info


__all__ = [
    "HELDOUT",
    "build",
    "lowest_cutoff",
    "pack_arm",
    "split_arms",
    "truncate_windows",
    "unit",
]
