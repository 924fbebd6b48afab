"""Driver memory and per-file time of ``phi-ray run --to pack`` at two corpus sizes, 10x apart.

    python bench/scale.py [--files 1000] [--scale 10] [--cpus 2] [--trace]

The mission's corpus is ~35M files; no stage may hold data on the driver that grows with
it (DESIGN: "the driver plans, lists and keeps manifests and counts"). This bench checks
that from outside: it writes a synthetic corpus in The Stack v1 dedup Parquet layout (its
real columns, lists and types) at ``--files`` and ``--files * --scale`` files, runs the
real CLI on each as a subprocess (tiny preset, offline judge, mined exercises: no
network), and samples the driver process's RSS with psutil every 0.2 s. The driver is the
``phi-ray`` process itself, not the Ray node it starts (raylet, GCS and workers are its
children and are reported separately, for context only).

Per stage it prints seconds per input file (from each stage's ``_SUCCESS.json``), the
driver's RSS at the stage's start, its peak during the stage and its growth over it
(stage windows from the CLI's ``[stage]`` lines, timestamped as they arrive). Targets:
driver peak at the large size <= 1.25x the small; seconds per file no worse at the large.

``--trace`` runs a third, small pass with the driver under ``tracemalloc`` (this file
re-executed as the driver, wrapping each stage's entry point): per stage, the source lines
whose Python allocations grew most over the stage -- where each stage's driver memory goes.
Synthetic files: each standard-library module (under ``--max-bytes``) is re-spelled once
per variant by suffixing every identifier, so variants share almost no 5-gram shingles
(no near-duplicate clusters across variants); every 50th file is also stored verbatim
under another repository (an exact duplicate) and every 70th as a lightly edited fork (a
near duplicate), as in bench/ingest.py.
"""

from __future__ import annotations

import argparse
import builtins
import hashlib
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.memory import tree_rss  # noqa: E402  (after the path insert)

MIB = 1 << 20
STAGES = ("ingest", "annotate", "classify", "score", "synth", "decontam", "pack")
_KEEP = set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | {"self", "cls"}
# An identifier: not inside an escape (\N{...}), not an f-string conversion or format spec
# ({x!r}, {n:d}), not a string prefix (f"..", rb'..').
_NAME = re.compile(r"(?<![\\\w!:])([A-Za-z_]\w*)\b(?![\"'])")
_DONE = re.compile(r"\[(" + "|".join(STAGES) + r")\] (done|up to)")
ROWS_PER_PARQUET = 2000
ROW_GROUP = 500


# --------------------------------------------------------------------------- corpus


def _respell(text: str, variant: int) -> str:
    if variant == 0:
        return text
    suffix = f"_v{variant}"
    return _NAME.sub(lambda m: m[1] if m[1] in _KEEP else m[1] + suffix, text)


def _row(text: str, module: str, variant: int, repo: str) -> dict:
    data = text.encode()
    lines = text.splitlines() or [""]
    path = f"{module.replace('.', '/')}_{variant}.py"
    sha = hashlib.sha1(data).hexdigest()
    repo_cols = {
        f"max_{k}_repo_{c}": v
        for k in ("stars", "issues", "forks")
        for c, v in (
            ("path", path),
            ("name", repo),
            ("head_hexsha", sha[::-1]),
            ("licenses", ["MIT"] if variant % 3 else ["Apache-2.0", "BSD-3-Clause"]),
        )
    }
    return {
        "hexsha": sha,
        "size": len(data),
        "ext": "py",
        "lang": "Python",
        **repo_cols,
        "max_stars_count": variant % 17 or None,
        "max_stars_repo_stars_event_min_datetime": "2015-01-01T00:00:00.000Z",
        "max_stars_repo_stars_event_max_datetime": "2022-03-01T00:00:00.000Z",
        "max_issues_count": variant % 3 or None,
        "max_forks_count": variant % 5 or None,
        "content": text,
        "avg_line_length": len(data) / len(lines),
        "max_line_length": max(len(ln) for ln in lines),
        "alphanum_fraction": sum(ch.isalnum() for ch in text) / max(1, len(text)),
    }


def _sources(max_bytes: int) -> list[tuple[str, str]]:
    from phi_ray.config import SourceConfig
    from phi_ray.corpus.readers import _list

    out = []
    for path, size in _list(SourceConfig(kind="stdlib", max_files=100_000), "bench", (".py",)):
        if size > max_bytes:
            continue
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        out.append((Path(path).stem + f"_{len(out)}", text))
    return out


def build_stack_corpus(dst: Path, n_files: int, max_bytes: int) -> tuple[int, float]:
    """``n_files`` rows of The Stack layout in Parquet files of ``ROWS_PER_PARQUET`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = _sources(max_bytes)
    dst.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    n = part = 0
    size = 0

    def flush() -> None:
        nonlocal rows, part
        if rows:
            pq.write_table(
                pa.Table.from_pylist(rows),
                dst / f"data-{part:05d}.parquet",
                row_group_size=ROW_GROUP,
            )
            rows, part = [], part + 1

    i = 0
    while n < n_files:
        module, base = src[i % len(src)]
        variant = i // len(src)
        text = _respell(base, variant)
        batch = [(text, f"org{variant % 97}/repo{variant}")]
        if i % 50 == 0:
            batch.append((text, f"mirror{variant}/copy"))
        if i % 70 == 0:
            lines = text.splitlines()
            lines[::40] = [ln + "  # fork" for ln in lines[::40]]
            batch.append(("\n".join(lines), f"fork{variant}/{module}"))
        for t, repo in batch[: n_files - n]:
            rows.append(_row(t, module, variant, repo))
            size += len(t.encode())
            n += 1
        if len(rows) >= ROWS_PER_PARQUET:
            flush()
        i += 1
    flush()
    return n, size / 1e6


# --------------------------------------------------------------------------- run


class Sampler:
    """RSS of one pid (the driver) and of it plus its descendants, every ``every`` s."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self.samples: list[tuple[float, int, int]] = []  # (time, driver, node)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                d, node = tree_rss(self.proc)
            except psutil.Error:
                break
            self.samples.append((time.time(), d, node))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def run_cli(corpus: Path, runs: Path, name: str, cpus: int, trace: bool) -> dict:
    """``phi-ray run --to pack`` on ``corpus`` as a subprocess; samples and stage windows."""
    sets = [
        f"corpus.sources=[{{kind: stack_parquet, path: {corpus}}}]",
        f"run.num_cpus={cpus}",
    ]
    if trace:  # this file as the driver: the same CLI, each stage wrapped in tracemalloc
        cmd = [sys.executable, __file__, "--as-driver"]
    else:
        cmd = [str(Path(sys.executable).parent / "phi-ray")]
    cmd += ["run", "--preset", "tiny", "--to", "pack", "--runs-dir", str(runs), "--run", name]
    for s in sets:
        cmd += ["--set", s]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "PHI_RAY_LLM"))}
    env.update(TOKENIZERS_PARALLELISM="false", RAY_ADDRESS="")
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    )
    sampler = Sampler(proc.pid)
    lines: list[tuple[float, str]] = []
    for line in proc.stdout:
        lines.append((time.time(), line.rstrip("\n")))
        if _DONE.match(line):
            print(f"  {time.time() - t0:6.0f} s {line.rstrip()}", flush=True)
    rc = proc.wait()
    sampler.stop()
    wall = time.time() - t0
    if rc != 0:
        tail = "\n".join(ln for _, ln in lines[-40:])
        raise RuntimeError(f"phi-ray run failed (rc {rc}) on {name}:\n{tail}")
    return {"samples": sampler.samples, "lines": lines, "wall": wall, "t0": t0}


def stage_windows(lines: list[tuple[float, str]]) -> dict[str, tuple[float, float]]:
    """[stage] start and end times from the CLI's own lines, as they arrived."""
    out: dict[str, tuple[float, float]] = {}
    start: dict[str, float] = {}
    for t, ln in lines:
        m = re.match(r"\[(\w+)\] (.*)", ln)
        if not m or m[1] not in STAGES:
            continue
        if m[2].startswith(("done in", "up to date")):
            out[m[1]] = (start.get(m[1], t), t)
        elif m[1] not in start:
            start[m[1]] = t
    return out


def successes(run_dir: Path) -> dict[str, dict]:
    out = {}
    for p in run_dir.rglob("_SUCCESS.json"):
        s = json.loads(p.read_text())
        if s.get("stage") in STAGES:
            out[s["stage"]] = s
    return out


def summarise(res: dict, run_dir: Path, n_files: int) -> dict:
    samples = res["samples"]
    windows = stage_windows(res["lines"])
    succ = successes(run_dir)
    stages = {}
    for name in STAGES:
        if name not in windows:
            continue
        a, b = windows[name]
        inside = [d for t, d, _ in samples if a <= t <= b] or [0]
        before = [d for t, d, _ in samples if t <= a] or inside
        after = [d for t, d, _ in samples if t <= b] or inside
        s = succ.get(name, {})
        dur = s.get("duration_s", b - a)
        stages[name] = {
            "seconds": dur,
            "s_per_file": dur / n_files,
            "rss_start": before[-1],
            "rss_peak": max(inside),
            "rss_growth": after[-1] - before[-1],
            "counts": s.get("counts", {}),
        }
    return {
        "files": n_files,
        "wall": res["wall"],
        "driver_peak": max(d for _, d, _ in samples),
        "node_peak": max(n for _, _, n in samples),
        "stages": stages,
    }


def report(small: dict, big: dict, scale: int) -> None:
    print(f"\n== per stage: seconds per file and driver RSS (MiB), {small['files']} vs "
          f"{big['files']} files ==")  # fmt: skip
    print(
        f"{'stage':9} {'ms/file small':>13} {'ms/file big':>11} {'ratio':>6} | "
        f"{'peak small':>10} {'peak big':>8} {'ratio':>6} | {'growth small':>12} {'growth big':>10}"
    )
    for name in STAGES:
        a, b = small["stages"].get(name), big["stages"].get(name)
        if not a or not b:
            continue
        print(
            f"{name:9} {a['s_per_file'] * 1e3:13.2f} {b['s_per_file'] * 1e3:11.2f} "
            f"{b['s_per_file'] / a['s_per_file']:6.2f} | {a['rss_peak'] / MIB:10.0f} "
            f"{b['rss_peak'] / MIB:8.0f} {b['rss_peak'] / a['rss_peak']:6.2f} | "
            f"{a['rss_growth'] / MIB:+12.0f} {b['rss_growth'] / MIB:+10.0f}"
        )
    ts, tb = (sum(s["seconds"] for s in r["stages"].values()) for r in (small, big))
    print(
        f"{'total':9} {ts / small['files'] * 1e3:13.2f} {tb / big['files'] * 1e3:11.2f} "
        f"{(tb / big['files']) / (ts / small['files']):6.2f}"
    )
    ratio = big["driver_peak"] / small["driver_peak"]
    print(
        f"\ndriver peak RSS: {small['driver_peak'] / MIB:.0f} MiB at {small['files']} files, "
        f"{big['driver_peak'] / MIB:.0f} MiB at {big['files']} ({scale}x): ratio {ratio:.2f} "
        f"(target <= 1.25)"
    )
    print(
        f"seconds per file (stages summed): {ts / small['files'] * 1e3:.2f} ms vs "
        f"{tb / big['files'] * 1e3:.2f} ms: ratio {(tb / big['files']) / (ts / small['files']):.2f} "
        "(target <= 1.00)"
    )
    print(
        f"Ray node (driver + raylet + GCS + workers) peak RSS, for context: "
        f"{small['node_peak'] / MIB:.0f} vs {big['node_peak'] / MIB:.0f} MiB"
    )
    print(f"wall: {small['wall']:.0f} s vs {big['wall']:.0f} s")
    c = big["stages"].get("ingest", {}).get("counts", {})
    if c:
        print(
            f"ingest at the large size: kept {c.get('files_out')}, exact dups "
            f"{c.get('removed_exact')}, near dups {c.get('removed_near')}"
        )


# --------------------------------------------------------------------------- tracing


def _traced_driver(argv: list[str]) -> int:
    """The CLI with each stage's entry point wrapped: tracemalloc growth per stage."""
    import tracemalloc

    from phi_ray import cli, stages

    tracemalloc.start(1)  # one frame: deeper tracebacks slow Ray's driver loop ~10x
    load = stages.Stage.load

    def traced_load(self: stages.Stage):
        fn = load(self)
        if fn is None:
            return fn

        def wrapped(cfg, run):
            before = tracemalloc.take_snapshot()
            tracemalloc.reset_peak()
            try:
                return fn(cfg, run)
            finally:
                after = tracemalloc.take_snapshot()
                cur, peak = tracemalloc.get_traced_memory()
                diff = after.compare_to(before, "lineno")
                print(f"[trace] {self.name}: traced now {cur / MIB:.1f} MiB, "
                      f"peak {peak / MIB:.1f} MiB; top growth:")  # fmt: skip
                for d in diff[:6]:
                    f = d.traceback[0]
                    print(f"[trace]   {d.size_diff / MIB:+8.2f} MiB {d.count_diff:+8d} blocks  "
                          f"{f.filename.split('site-packages/')[-1]}:{f.lineno}")  # fmt: skip
                sys.stdout.flush()

        return wrapped

    stages.Stage.load = traced_load
    return cli.main(argv)


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000, help="files in the small corpus")
    ap.add_argument("--scale", type=int, default=10, help="the large corpus is this many x")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--max-bytes", type=int, default=16_000, help="largest stdlib file used")
    ap.add_argument("--trace", action="store_true", help="also a tracemalloc pass (small size)")
    ap.add_argument("--keep", default=None, help="keep corpora and runs under this directory")
    args = ap.parse_args()

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench-scale-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        figures = {}
        for label, n in (("small", args.files), ("big", args.files * args.scale)):
            t0 = time.time()
            n_rows, mb = build_stack_corpus(tmp / f"corpus-{n}", n, args.max_bytes)
            print(f"corpus {label}: {n_rows} files, {mb:.1f} MB of content "
                  f"(built in {time.time() - t0:.0f} s)", flush=True)  # fmt: skip
            res = run_cli(tmp / f"corpus-{n}", tmp / "runs", f"scale-{n}", args.cpus, False)
            figures[label] = summarise(res, tmp / "runs" / f"scale-{n}", n_rows)
            print(
                json.dumps({k: v for k, v in figures[label].items() if k != "stages"}), flush=True
            )
            for name, s in figures[label]["stages"].items():
                print(f"  {name:9} {s['seconds']:8.1f} s  driver RSS start "
                      f"{s['rss_start'] / MIB:6.0f}  peak {s['rss_peak'] / MIB:6.0f}  "
                      f"growth {s['rss_growth'] / MIB:+6.0f} MiB", flush=True)  # fmt: skip
        report(figures["small"], figures["big"], args.scale)
        if args.trace:
            print("\n== where the driver's Python memory goes, per stage (tracemalloc, "
                  f"{args.files} files) ==", flush=True)  # fmt: skip
            res = run_cli(tmp / f"corpus-{args.files}", tmp / "runs", "trace", args.cpus, True)
            for _, ln in res["lines"]:
                if ln.startswith("[trace]"):
                    print(ln[8:])
        if args.keep:
            (tmp / "figures.json").write_text(json.dumps(figures, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-driver"]:
        sys.exit(_traced_driver(sys.argv[2:]))
    main()
