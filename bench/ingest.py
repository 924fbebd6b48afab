"""Benchmark the ingest stage against a plain single-process loop doing the same work.

    python bench/ingest.py [--files 600] [--scale 5] [--cpus 2]

Builds a corpus of ``--files`` files from the standard library (every 10th one also copied
verbatim, every 7th also as an edited fork, so both dedup steps have work), then times:

* baseline: one Python process, a plain loop over the same files calling the same library
  functions (read, checks, prefilters, sha256, token counts, MinHash), exact dedup with a
  dict, LSH buckets in a dict, the same connected components, Parquet output;
* phi-ray: the ingest stage (``phi_ray.corpus.stage.run``) on a local Ray cluster with
  ``--cpus`` CPUs, started before the clock (a cluster outlives one stage).

Side by side on the same 1x files, the MinHash near-dedup alone (256 hashes, 5-grams,
the same bands x rows), when ``datatrove`` is installed (``pip install -e '.[bench]'``,
as ``make bench`` does): datatrove's four stages (signatures, buckets, cluster, filter; ``--cpus`` workers)
against phi-ray's (signatures in Ray Data, ``corpus.dedup``'s distributed LSH edges and
components, the filter; same Ray cluster). Both read the files from the same two Parquet
shards written before either clock starts.

Then both again on a corpus ``--scale`` times larger (the speed-up once Ray Data's fixed
per-pass costs are amortised), and peak memory, which should not grow with the corpus:
peak RSS of the driver and of the whole Ray node (driver, raylet, GCS, workers; sampled
every 0.1 s) for both sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the baseline gets one core too

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.memory import tree_rss  # noqa: E402  (after the path insert)


def build_corpus(dst: Path, n_files: int, variant: int = 0) -> int:
    """``n_files`` stdlib files (+ planted duplicates); ``variant`` makes a disjoint copy."""
    from phi_ray.config import SourceConfig
    from phi_ray.corpus.readers import _list

    files = _list(SourceConfig(kind="stdlib", max_files=n_files), "bench", (".py",))
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, (p, _) in enumerate(files):
        try:
            text = Path(p).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if variant:  # a different file to every shingle: no cross-copy dedup
            text = "\n".join(
                f"{ln}  # v{variant}" if ln.strip() else ln for ln in text.splitlines()
            )
        (dst / f"f{i:05d}_{variant}.py").write_text(text)
        n += 1
        if i % 10 == 0:
            (dst / f"f{i:05d}_{variant}_copy.py").write_text(text)
            n += 1
        if i % 7 == 0:
            lines = text.splitlines()
            lines[::40] = [ln + "  # fork" for ln in lines[::40]]
            (dst / f"f{i:05d}_{variant}_fork.py").write_text("\n".join(lines))
            n += 1
    return n


class PeakRSS:
    """Peak RSS of this process and of it plus all its descendants (the Ray node)."""

    def __init__(self) -> None:
        self.driver = self.node = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                d, total = tree_rss(me)
            except psutil.Error:
                continue
            self.driver, self.node = max(self.driver, d), max(self.node, total)
            self._stop.wait(0.1)

    def __enter__(self) -> PeakRSS:
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def baseline(src: Path, out: Path, cfg) -> dict:
    """The same per-file work and dedup in one process, the plain way."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from phi_ray.config import SourceConfig
    from phi_ray.corpus import dedup
    from phi_ray.corpus.minhash import lsh_params
    from phi_ray.corpus.process import CORPUS_COLUMNS, process_batch, tokenizer_spec
    from phi_ray.corpus.readers import _list, read_file_batch

    c = cfg.corpus
    bands, rows = lsh_params(c.dedup.threshold, c.dedup.num_perm)
    files = _list(SourceConfig(kind="local_dir", path=str(src)), "bench", (".py",))
    tok = tokenizer_spec()
    docs = []
    for i in range(0, len(files), c.batch_size):
        items = [
            {"file": p, "size": s, "rel": p, "repo": "bench"}
            for p, s in files[i : i + c.batch_size]
        ]
        raw = read_file_batch(pa.Table.from_pylist(items), c.filters.max_bytes, "unknown", "local")
        docs.append(process_batch(raw, c.filters, c.dedup, bands, rows, True, tok))
    table = pa.concat_tables(docs)
    kept = table.filter(pc.equal(table["drop"], ""))
    seen: dict[str, int] = {}
    for j, (i, path) in enumerate(
        zip(kept["id"].to_pylist(), kept["path"].to_pylist(), strict=True)
    ):
        if i not in seen or path < kept["path"][seen[i]].as_py():
            seen[i] = j
    exact = kept.take(sorted(seen.values()))
    buckets: dict[int, list[int]] = {}
    for uid, keys in zip(exact["uid"].to_pylist(), exact["bands"].to_pylist(), strict=True):
        for k in keys:
            buckets.setdefault(k, []).append(uid)
    src_e, dst_e = [], []
    for members in buckets.values():
        head = min(members)
        src_e += [head] * (len(members) - 1)
        dst_e += [m for m in members if m != head]
    removed = dedup.duplicates_to_remove(np.array(src_e, np.uint64), np.array(dst_e, np.uint64))
    final = dedup.drop_uids(exact, removed, CORPUS_COLUMNS)
    out.mkdir(parents=True)
    for k in range(0, final.num_rows, c.rows_per_file):
        pq.write_table(final.slice(k, c.rows_per_file), out / f"part-{k:06d}.parquet")
    return {
        "files_out": final.num_rows,
        "removed_exact": kept.num_rows - exact.num_rows,
        "removed_near": len(removed),
    }


def to_shards(src: Path, dst: Path, shards: int) -> None:
    """The corpus as ``shards`` Parquet files of (id, text): one input for both MinHash sides."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(src.iterdir())
    dst.mkdir(parents=True)
    for i in range(shards):
        part = files[i::shards]
        texts = [p.read_text(errors="replace") for p in part]
        pq.write_table(
            pa.table({"id": [p.name for p in part], "text": texts}), dst / f"{i}.parquet"
        )


def datatrove_minhash(shards: Path, work: Path, workers: int, bands: int, rows: int) -> dict:
    """datatrove's four MinHash stages with its local executor; seconds per stage, kept."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.writers import ParquetWriter
    from datatrove.utils.hashing import HashConfig
    from loguru import logger

    logger.remove()  # datatrove logs every task's stats at INFO; its errors still show
    logger.add(sys.stderr, level="WARNING")
    cfg = MinhashConfig(
        n_grams=5, num_buckets=bands, hashes_per_bucket=rows, hash_config=HashConfig(64)
    )
    tasks = len(list(shards.iterdir()))
    times = {}

    def stage(name: str, pipeline: list, n: int) -> None:
        t0 = time.perf_counter()
        LocalPipelineExecutor(
            pipeline, tasks=n, workers=min(workers, n), logging_dir=str(work / "logs" / name)
        ).run()
        times[name] = time.perf_counter() - t0

    sigs, buckets, remove = (str(work / d) for d in ("sigs", "buckets", "remove"))
    stage("signatures", [ParquetReader(str(shards)), MinhashDedupSignature(sigs, cfg)], tasks)
    stage("buckets", [MinhashDedupBuckets(sigs, buckets, config=cfg)], bands)
    stage("cluster", [MinhashDedupCluster(buckets, remove, config=cfg)], 1)
    out = str(work / "out")
    stage(
        "filter",
        [ParquetReader(str(shards)), MinhashDedupFilter(remove), ParquetWriter(out)],
        tasks,
    )
    import pyarrow.parquet as pq

    return {"seconds": times, "kept": pq.read_table(out).num_rows}


def _uid_of_ids(batch):
    import hashlib

    import pyarrow as pa

    digests = (hashlib.sha256(i.encode()).digest() for i in batch["id"].to_pylist())
    return pa.array([int.from_bytes(d[:8], "big") for d in digests], pa.uint64())


def _minhash_batch(batch, num_perm: int, ngram: int, bands: int, rows: int):
    """(uid, bands): a uid per file (not per content, so exact copies link as datatrove's)."""
    import pyarrow as pa

    from phi_ray.corpus.minhash import band_key_lists

    keys = band_key_lists(batch["text"].to_pylist(), num_perm, ngram, bands, rows)
    return pa.table({"uid": _uid_of_ids(batch), "bands": keys})


def _minhash_filter(batch, ref):
    import pyarrow as pa
    import ray

    from phi_ray.corpus.dedup import in_sorted

    return batch.filter(pa.array(~in_sorted(_uid_of_ids(batch).to_numpy(), ray.get(ref))))


def phiray_minhash(shards: Path, work: Path, cfg) -> dict:
    """phi-ray's MinHash near-dedup alone, in Ray: the same steps as ingest's passes."""
    import pyarrow.parquet as pq
    import ray

    from phi_ray.corpus import dedup
    from phi_ray.corpus.minhash import lsh_params
    from phi_ray.corpus.stage import read_work

    d = cfg.corpus.dedup
    bands, rows = lsh_params(d.threshold, d.num_perm)
    times = {}
    t0 = time.perf_counter()
    kw = {"num_perm": d.num_perm, "ngram": d.ngram, "bands": bands, "rows": rows}
    read_work(str(shards)).map_batches(
        _minhash_batch, batch_format="pyarrow", batch_size=cfg.corpus.batch_size, fn_kwargs=kw
    ).write_parquet(str(work / "sigs"))
    times["signatures"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = int(ray.cluster_resources().get("CPU", 1))
    edges = dedup.near_duplicate_edges(read_work(str(work / "sigs")), parts)
    removed = dedup.duplicates_to_remove(*dedup.collect_edges(edges))
    times["buckets+cluster"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    read_work(str(shards)).map_batches(
        _minhash_filter, batch_format="pyarrow", fn_kwargs={"ref": ray.put(removed)}
    ).write_parquet(str(work / "out"))
    times["filter"] = time.perf_counter() - t0
    return {"seconds": times, "kept": pq.read_table(str(work / "out")).num_rows}


def _print_minhash(n: int, dt: dict, pr: dict, t_ingest: float) -> None:
    t_dt, t_pr = sum(dt["seconds"].values()), sum(pr["seconds"].values())
    print("\n== MinHash near-dedup alone, same files, same shards (1x corpus) ==")
    for name, r, t in (("datatrove (4 stages)", dt, t_dt), ("phi-ray (Ray Data)", pr, t_pr)):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["seconds"].items())
        print(f"{name:21} {t:7.2f} s  {n / t:7.1f} files/s  kept {r['kept']}  ({stages})")
    print(
        f"phi-ray / datatrove files/s: {t_dt / t_pr:.2f}x (target >= 1.0); phi-ray's whole "
        f"ingest: {n / t_ingest:.1f} files/s, {t_dt / t_ingest:.2f}x datatrove's MinHash alone"
    )


def run_stage(src: Path, runs: Path, name: str):
    from phi_ray.config import load_config
    from phi_ray.corpus.stage import run
    from phi_ray.runs import RunDir

    cfg = load_config(
        "tiny",
        [
            f"run.root={runs}",
            f"run.name={name}",
            f"corpus.sources=[{{kind: local_dir, path: {src}}}]",
        ],
    )
    return run(cfg, RunDir.from_config(cfg))


def _same_work(stage_counts: dict, base: dict) -> None:
    """Both sides kept and removed the same files, so their times compare the same work."""
    keys = ("files_out", "removed_exact", "removed_near")
    assert [stage_counts[k] for k in keys] == [base[k] for k in keys], (stage_counts, base)


def _start_ray(cpus: int) -> None:
    import ray

    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    # Warm the cluster's worker processes (a cluster outlives one stage); same for both.
    ray.data.range(64, override_num_blocks=cpus * 2).map_batches(lambda b: b).materialize()


def _minhash_only(args, small: Path, n: int, tmp: Path, cfg, dt: dict | None) -> None:
    """``--minhash-only``: datatrove's MinHash, phi-ray's, and phi-ray's whole ingest (1x)."""
    if dt is None:
        raise SystemExit("--minhash-only needs datatrove")
    _start_ray(args.cpus)
    pr = phiray_minhash(tmp / "shards", tmp / "pr", cfg)
    t0 = time.perf_counter()
    r = run_stage(small, tmp / "runs", "x1")
    t_ray = time.perf_counter() - t0
    _print_minhash(n, dt, pr, t_ray)
    print(f"ingest pass seconds: {r.success['pass_seconds']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500, help="stdlib files in the 1x corpus")
    ap.add_argument("--scale", type=int, default=5, help="size of the larger corpus, x")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument(
        "--minhash-only", action="store_true", help="only the MinHash comparison (and ingest 1x)"
    )
    args = ap.parse_args()
    try:
        import datatrove  # noqa: F401

        with_datatrove = True
    except ImportError:
        with_datatrove = False
        print("datatrove is not installed: no MinHash comparison (pip install datatrove)")

    import ray

    from phi_ray.config import load_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        small = tmp / "corpus-1x"
        n_small = build_corpus(small, args.files)
        big = tmp / f"corpus-{args.scale}x"
        n_big = sum(build_corpus(big, args.files, v) for v in range(args.scale))
        mb = sum(p.stat().st_size for p in small.iterdir()) / 1e6
        mb_big = sum(p.stat().st_size for p in big.iterdir()) / 1e6
        print(
            f"corpus 1x: {n_small} files, {mb:.1f} MB; {args.scale}x: {n_big} files, {mb_big:.1f} MB"
        )

        cfg = load_config("tiny")
        if with_datatrove:
            from phi_ray.corpus.minhash import lsh_params

            to_shards(small, tmp / "shards", args.cpus)
            bands, rows = lsh_params(cfg.corpus.dedup.threshold, cfg.corpus.dedup.num_perm)
            os.environ.setdefault("DATATROVE_COLORIZE_LOGS", "0")
            dt = datatrove_minhash(tmp / "shards", tmp / "dt", args.cpus, bands, rows)
        if args.minhash_only:
            return _minhash_only(args, small, n_small, tmp, cfg, dt if with_datatrove else None)
        with PeakRSS() as base_mem:
            t0 = time.perf_counter()
            b = baseline(small, tmp / "baseline-out", cfg)
            t_base = time.perf_counter() - t0
        t0 = time.perf_counter()  # the same loop on the larger corpus: a same-size baseline
        b5 = baseline(big, tmp / "baseline-out-big", cfg)
        t_base5 = time.perf_counter() - t0

        _start_ray(args.cpus)
        if with_datatrove:
            pr = phiray_minhash(tmp / "shards", tmp / "pr", cfg)
        with PeakRSS() as mem1:
            t0 = time.perf_counter()
            r1 = run_stage(small, tmp / "runs", "x1")
            t_ray = time.perf_counter() - t0
        with PeakRSS() as mem5:
            t0 = time.perf_counter()
            r5 = run_stage(big, tmp / "runs", f"x{args.scale}")
            t_ray5 = time.perf_counter() - t0
        ray.shutdown()

        c1 = r1.counts
        _same_work(c1, b)
        print("\n== throughput, same files, same work (1x corpus) ==")
        print(
            f"baseline (1 process loop): {t_base:7.2f} s  {n_small / t_base:7.1f} files/s  {mb / t_base:6.2f} MB/s"
        )
        print(
            f"phi-ray ingest ({args.cpus} CPUs):   {t_ray:7.2f} s  {n_small / t_ray:7.1f} files/s  {mb / t_ray:6.2f} MB/s"
        )
        print(f"speed-up: {t_base / t_ray:.2f}x  (target >= 1.5x on 2 cores)")
        print(
            f"kept {c1['files_out']}, exact dups {c1['removed_exact']}, near dups {c1['removed_near']}, "
            f"drops {sum(c1['drops'].values())}; pass seconds {r1.success['pass_seconds']}"
        )
        if with_datatrove:
            _print_minhash(n_small, dt, pr, t_ray)
        print(f"\n== memory: 1x vs {args.scale}x corpus (phi-ray) ==")
        print(
            f"{args.scale}x: {t_ray5:.2f} s, {n_big / t_ray5:.1f} files/s, {mb_big / t_ray5:.2f} MB/s; "
            f"kept {r5.counts['files_out']}, exact dups {r5.counts['removed_exact']}, "
            f"near dups {r5.counts['removed_near']}"
        )
        _same_work(r5.counts, b5)
        print(
            f"baseline on the {args.scale}x corpus: {t_base5:.2f} s, {n_big / t_base5:.1f} files/s; "
            f"speed-up at {args.scale}x: {t_base5 / t_ray5:.2f}x (Ray Data's fixed costs amortised)"
        )
        mib = 1 << 20
        print(
            f"driver peak RSS:    1x {mem1.driver / mib:7.1f} MiB   {args.scale}x {mem5.driver / mib:7.1f} MiB  "
            f"ratio {mem5.driver / mem1.driver:.2f}"
        )
        print(
            f"Ray node peak RSS:  1x {mem1.node / mib:7.1f} MiB   {args.scale}x {mem5.node / mib:7.1f} MiB  "
            f"ratio {mem5.node / mem1.node:.2f}"
        )
        print(f"baseline peak RSS (1x, holds the corpus): {base_mem.driver / mib:.1f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
