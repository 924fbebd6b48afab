"""Scoring throughput: the Ray Data pipeline against a single-process loop, same files/model.

    python bench/score.py [--files 24] [--hidden 512] [--layers 4] [--max-length 256]

Both sides score the same corpus files with the same classifier (a tiny-codegen embedder
widened so that matmul FLOPs dominate, plus a random forest) and the same batch sizes,
end to end: model load, Parquet read, tokenize, embed, predict. Printed:

- tokens/s of ``phi_ray.quality.score``'s Ray Data pipeline vs the loop, and their ratio
  (target >= 0.9: Ray costs nothing);
- the embedding step's achieved FLOP/s (2 x non-embedding params x tokens, plus the
  attention matmuls, over the forward time of the loop) against this machine's fp32
  (GPU: bf16) matmul FLOP/s measured here, and their ratio (target >= 0.4);
- on a GPU: tokens per GPU-hour;
- the embedding forward with the new attention (``scaled_dot_product_attention`` in the
  model dtype) against the old (transformers' eager CodeGen attention: fp32 q.k^T and
  materialised scores), same weights, rows and batches, alternating runs: tokens/s of each,
  their ratio, each one's FLOP ratio, and the largest difference between their vectors.
  ``--attention-only`` runs just this part (no Ray).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phi_ray.config import load_config
from phi_ray.quality.classifier import QualityClassifier, build_meta
from phi_ray.quality.embed import Embedder, token_batches


def make_corpus(out: Path, n_files: int, rows: int) -> list[str]:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    srcs = sorted(p for p in root.rglob("*.py") if "test" not in p.parts)[: n_files * rows]
    files = []
    for i in range(n_files):
        texts = [p.read_text(errors="replace") for p in srcs[i * rows : (i + 1) * rows]]
        ids = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        table = pa.table({"id": ids, "content": texts, "n_tokens": [0] * len(texts)})
        files.append(str(out / f"part-{i:05d}.parquet"))
        pq.write_table(table, files[-1])
    return files


def matmul_peak(device: str, n: int = 2048, seconds: float = 3.0) -> float:
    """Dense matmul FLOP/s: fp32 on CPU, bf16 on GPU."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def forward_flops(emb: Embedder, lengths: list[int]) -> float:
    """2 x params x real tokens + attention (QK^T and AV over the padded square)."""
    n_param = emb.num_parameters(non_embedding=True)
    layers, d = emb.model.config.n_layer, emb.dim
    flops = 2.0 * n_param * sum(lengths)
    for idx in token_batches(lengths, emb.token_budget):  # padded to their longest row
        t = max(lengths[i] for i in idx)
        flops += 4.0 * layers * len(idx) * t * t * d
    return flops


def attention_compare(cfg, texts: list[str], device: str, reps: int = 3) -> dict:
    """New (SDPA) vs old (eager fp32 scores) embedding forward on the same rows."""
    import dataclasses
    import statistics

    from transformers.activations import ACT2FN

    ecfg = cfg.quality.embedder
    new = Embedder(ecfg, device=device, seed=cfg.run.seed)
    sdpa = Embedder(ecfg, device=device, seed=cfg.run.seed)
    old = Embedder(
        dataclasses.replace(ecfg, attn_implementation="eager"), device=device, seed=cfg.run.seed
    )
    for emb in (old, sdpa):  # transformers' CodeGen MLP as it comes: the unfused gelu_new
        for block in emb.model.h:
            block.mlp.act = ACT2FN["gelu_new"]
    rows = new.tokenize(texts)
    tokens = sum(map(len, rows))
    arms = {
        "old": (old, "eager fp32 scores, gelu_new"),
        "sdpa": (sdpa, "sdpa, gelu_new"),
        "new": (new, "sdpa, one-kernel gelu"),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    peaks: list[float] = []
    out = {}
    for i in range(reps + 1):  # round 0 warms up
        for name, (emb, _) in arms.items():
            t0 = time.perf_counter()
            out[name] = emb.embed_tokens(rows)
            if i:
                times[name].append(time.perf_counter() - t0)
        if i:  # the peak in each round too: on a shared machine the load drifts
            peaks.append(matmul_peak(device, seconds=1.0))
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = statistics.median(peaks)
    flops = forward_flops(new, [len(r) for r in rows])
    padded = sum(len(b) * max(len(rows[j]) for j in b) for b in token_batches(
        [len(r) for r in rows], new.token_budget))  # fmt: skip
    diff = float(np.abs(out["new"] - out["old"]).max())
    print(f"attention: {len(rows)} files, {tokens:,} tokens ({tokens / padded:.0%} of the "
          f"padded batches), {device}, {reps} reps alternating; matmul peak "
          f"{peak / 1e9:,.1f} GFLOP/s (median of {len(peaks)})")  # fmt: skip
    for k, (_, what) in arms.items():
        print(f"  {k:4} ({what}): {tokens / med[k]:,.0f} tokens/s, "
              f"FLOP ratio {flops / med[k] / peak:.2f}")  # fmt: skip
    print(f"  ratio new / old: {med['old'] / med['new']:.2f}x; sdpa / old "
          f"{med['old'] / med['sdpa']:.2f}x; max |new - old| {diff:.1e}")  # fmt: skip
    return {"speedup": med["old"] / med["new"], "flop_ratio": flops / med["new"] / peak}


def single_process(clf_dir: str, files: list[str], batch_rows: int, device: str) -> dict:
    t0 = time.perf_counter()
    clf = QualityClassifier.load(clf_dir, device=device)
    emb = clf.embedder
    loaded = time.perf_counter() - t0
    tokens, fwd_s, lengths, n = 0, 0.0, [], 0
    for f in files:
        table = pq.read_table(f, columns=["id", "content"])
        texts = table.column("content").to_pylist()
        for s in range(0, len(texts), batch_rows):
            ids = emb.tokenize(texts[s : s + batch_rows])
            t1 = time.perf_counter()
            X = emb.embed_tokens(ids)
            fwd_s += time.perf_counter() - t1
            clf.score_embeddings(X)
            tokens += sum(map(len, ids))
            lengths += [len(r) for r in ids]
            n += len(ids)
    wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "steady": tokens / (wall - loaded),  # without the model load
        "tokens": tokens,
        "rows": n,
        "fwd_s": fwd_s,
        "lengths": lengths,
        "emb": emb,
    }


def ray_pipeline(cfg, clf_dir: str, files: list[str]) -> dict:
    from phi_ray.quality import score

    t0 = time.perf_counter()
    ds = score._pipeline(cfg, files, clf_dir)
    tokens = rows = 0
    first = None  # (time, tokens) at the first output: actor start-up is behind it
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        tokens += int(np.asarray(batch["n_embedded"]).sum())
        rows += batch.num_rows
        first = first or (time.perf_counter(), tokens)
    wall = time.perf_counter() - t0
    after = time.perf_counter() - first[0]
    steady = (tokens - first[1]) / after if after > 0 and tokens > first[1] else float("nan")
    return {"wall": wall, "tokens": tokens, "rows": rows, "steady": steady}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rows", type=int, default=8, help="rows per corpus file")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="embedder forward batch")
    ap.add_argument("--batch-rows", type=int, default=16, help="rows per Ray Data batch")
    ap.add_argument(
        "--concurrency", type=int, default=None, help="actors (default: 1 per GPU/core)"
    )
    ap.add_argument("--attention-only", action="store_true", help="only new vs old attention")
    args = ap.parse_args()

    import torch

    from phi_ray.runtime import init_ray

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    cores = os.cpu_count() or 1
    # CPU: one single-threaded actor per core (half a CPU of Ray resources each, so the
    # read/tokenize tasks can be scheduled beside them); the loop gets every core as
    # torch threads. GPU: one actor per GPU.
    conc = args.concurrency or (torch.cuda.device_count() if gpu else cores)
    per_actor = 1.0 if gpu else 0.5
    overrides = [
        f"quality.embedder.tiny_hidden={args.hidden}",
        f"quality.embedder.tiny_layers={args.layers}",
        f"quality.embedder.tiny_heads={args.heads}",
        f"quality.embedder.max_length={args.max_length}",
        f"quality.embedder.batch_size={args.batch_size}",
        f"quality.batch_rows={args.batch_rows}",
        f"quality.concurrency={conc}",
        f"quality.num_cpus={per_actor}",
        f"quality.num_gpus={1 if gpu else 0}",
    ]
    cfg = load_config("tiny", overrides)
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    files = make_corpus(tmp, args.files, args.rows)
    texts = [t for f in files for t in pq.read_table(f, columns=["content"])["content"].to_pylist()]
    torch.set_num_threads(cores)
    attention_compare(cfg, texts, device)
    if args.attention_only:
        return

    # A classifier over this embedder: the forest's fit is not what is measured.
    emb = Embedder(cfg.quality.embedder, device="cpu", seed=cfg.run.seed)
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    forest = RandomForestClassifier(n_estimators=50, random_state=0)
    forest.fit(rng.normal(size=(200, emb.dim)), rng.random(200) < 0.5)
    clf_dir = str(tmp / "classifier")
    QualityClassifier(forest, build_meta(emb, 0.5)).save(clf_dir)
    del emb

    init_ray(None)  # a local cluster over all cores (or RAY_ADDRESS)
    print(f"device={device} cores={cores} actors={conc} x {per_actor} CPU; files={args.files} "
          f"x {args.rows} rows; tiny-codegen d={args.hidden} L={args.layers} T<={args.max_length}")  # fmt: skip
    ray_pipeline(cfg, clf_dir, files[:2])  # warm the workers' imports, not the model
    r = ray_pipeline(cfg, clf_dir, files)
    s = single_process(clf_dir, files, args.batch_rows, device)
    assert r["rows"] == s["rows"] and r["tokens"] == s["tokens"], (r, s)

    ray_tps, loop_tps = r["tokens"] / r["wall"], s["tokens"] / s["wall"]
    print(f"tokens scored            : {s['tokens']:,} ({s['rows']} files)")
    print(f"single-process loop      : {loop_tps:,.0f} tokens/s ({s['wall']:.1f} s)")
    print(f"Ray Data pipeline        : {ray_tps:,.0f} tokens/s ({r['wall']:.1f} s)")
    print(f"ratio Ray / loop         : {ray_tps / loop_tps:.2f}  (target >= 0.9; end to end)")
    print(f"steady state (no start-up): Ray {r['steady']:,.0f} vs loop {s['steady']:,.0f} tokens/s, "
          f"ratio {r['steady'] / s['steady']:.2f}")  # fmt: skip

    flops = forward_flops(s["emb"], s["lengths"])
    achieved = flops / s["fwd_s"]
    peak = matmul_peak(device)
    kind = "bf16" if gpu else "fp32"
    print(f"embedding forward        : {achieved / 1e9:,.1f} GFLOP/s over {s['fwd_s']:.1f} s "
          f"({s['emb'].num_parameters() / 1e6:.1f}M non-embedding params)")  # fmt: skip
    print(f"{kind} matmul peak (here)  : {peak / 1e9:,.1f} GFLOP/s")
    print(f"ratio forward / matmul   : {achieved / peak:.2f}  (target >= 0.4)")
    if gpu:
        per_gpu = ray_tps / conc
        print(f"tokens per GPU-hour      : {per_gpu * 3600:,.3e} (MFU vs measured peak above)")


if __name__ == "__main__":
    main()
