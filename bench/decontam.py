"""Decontamination throughput: AST pairs/s and whole-stage rows/s, with baselines, same run.

Data: a synthetic set of exercises (signature + docstring / body) made from the standard
library's functions, with ``--contamination`` of them planted HumanEval copies (exact,
renamed, partial). The paper's set is 50k-880k exercises; the default here is smaller so
that the run finishes in about two minutes on a 2-core CPU machine (``--rows 50000`` for
the full size).

1. AST step, in process: pairs compared per second with phi-ray's compact normalised AST
   strings vs the baseline of plain ``ast.dump`` strings, same pairs, same rapidfuzz
   metric; and the pairs a k-NN gate leaves (n·k) vs all pairs (n·m).
2. Whole stage on Ray (``phi_ray.decontam.stage.run``, tiny preset): rows/s with
   embedding k-NN candidates vs the all-pairs AST baseline (``decontam.candidates=all``)
   on a ``--baseline-rows`` subset, and how the workers' time splits among the methods.

    python bench/decontam.py [--rows 2000] [--baseline-rows 500] [--contamination 0.02]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "decontam"))

from decontam_helpers import _split, exact, exercise, renamed  # noqa: E402
from rapidfuzz.distance import Indel  # noqa: E402

from phi_ray.config import load_config  # noqa: E402
from phi_ray.decontam.astmatch import units  # noqa: E402
from phi_ray.decontam.benchmarks import load_humaneval  # noqa: E402


def stdlib_exercises(n: int) -> list[dict]:
    """Up to ``n`` distinct exercises from standard-library functions."""
    out: dict[str, dict] = {}
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if {"test", "tests", "site-packages", "idle_test"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or len(node.body) < 2:
                continue
            doc = (ast.get_docstring(node) or f"Implement {node.name}.").splitlines()[0]
            try:
                prompt, completion = _split(node, doc.replace('"""', "'''"))
            except (ValueError, TypeError, AttributeError):
                continue
            row = exercise(prompt, completion, node.name, topic="stdlib")
            out.setdefault(row["id"], row)
            if len(out) >= n:
                return list(out.values())
    return list(out.values())


def synthetic(n: int, contamination: float, seed: int = 0) -> list[dict]:
    """``n`` exercises, ``contamination`` of them planted HumanEval copies."""
    rng = random.Random(seed)
    probs = [p for p in load_humaneval() if p.entry_point]
    planted: list[dict] = []
    for i in range(int(n * contamination)):
        p = rng.choice(probs)
        try:
            kind = i % 3
            row = exact(p) if kind == 0 else renamed(p, extra=kind - 1, seed=i)
        except (StopIteration, KeyError, ValueError):
            continue
        planted.append(row)
    base = stdlib_exercises(n - len(planted))
    rows = planted + base
    # Not enough distinct stdlib functions: add renamed variants of them.
    i = 0
    while len(rows) < n and base:
        src = base[i % len(base)]
        body = src["completion"] + f"    _variant = {i}\n"
        rows.append(exercise(src["prompt"], body, src["func_name"], topic="stdlib-variant"))
        i += 1
    rng.shuffle(rows)
    return rows[:n]


def bench_ast(rows: list[dict], k: int, sample: int) -> dict:
    """Pairs/s of our normalised AST strings vs plain ``ast.dump`` strings, same pairs."""
    probs = load_humaneval()
    ours_b = [units(p.code, p.entry_point) for p in probs]
    dump_b = [[ast.dump(ast.parse(p.code))] for p in probs]
    rng = random.Random(1)
    picked = rng.sample(rows, min(sample, len(rows)))
    pairs = [(r, j) for r in picked for j in rng.sample(range(len(probs)), k)]
    ours_r = {r["id"]: units(r["prompt"] + r["completion"]) for r in picked}
    dump_r = {}
    for r in picked:
        try:
            dump_r[r["id"]] = [ast.dump(ast.parse(r["prompt"] + r["completion"]))]
        except SyntaxError:
            dump_r[r["id"]] = []

    def run(row_units, bench_units) -> float:
        t0 = time.perf_counter()
        for r, j in pairs:
            for a in row_units[r["id"]]:
                for b in bench_units[j]:
                    Indel.normalized_similarity(a, b, score_cutoff=0.8)
        return len(pairs) / (time.perf_counter() - t0)

    base, ours = run(dump_r, dump_b), run(ours_r, ours_b)
    return {
        "pairs": len(pairs),
        "pairs_per_s": ours,
        "baseline_ast_dump_pairs_per_s": base,
        "ratio": ours / base,
        "mean_chars": sum(len(u[0]) for u in ours_r.values() if u) / max(len(ours_r), 1),
        "baseline_mean_chars": sum(len(u[0]) for u in dump_r.values() if u) / max(len(dump_r), 1),
    }


def bench_stage(rows: list[dict], root: str, name: str, overrides: list[str]) -> dict:
    """Run the real stage on ``rows``; wall time, rows/s and the report's method split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from phi_ray.decontam.stage import run as decontam
    from phi_ray.runs import RunDir

    cfg = load_config("tiny", [f"run.root={root}", f"run.name={name}", *overrides])
    run = RunDir.from_config(cfg)
    with run.stage("synth", f"bench-{len(rows)}") as out:
        dest = Path(out.tmp) / "exercises"
        dest.mkdir(parents=True)
        for i in range(0, len(rows), 1000):  # several files: parallel read tasks
            pq.write_table(pa.Table.from_pylist(rows[i : i + 1000]), dest / f"part-{i:06d}.parquet")
        out.finish(counts={"rows": len(rows)})
    t0 = time.perf_counter()
    res = decontam(cfg, run)
    wall = time.perf_counter() - t0
    report = json.loads((Path(res.path) / "report.json").read_text())
    ds = report["datasets"]["exercises"]
    return {
        "rows": len(rows),
        "wall_s": wall,
        "rows_per_s": len(rows) / wall,
        "method_seconds": ds["method_seconds"],
        "ast_pairs": ds["ast_pairs"],
        "removed": {t: v["removed"] for t, v in ds["taus"].items()},
    }


def _split_line(sec: dict) -> str:
    total = sum(sec.values()) or 1.0
    return ", ".join(f"{m} {s:.1f}s ({100 * s / total:.0f}%)" for m, s in sec.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--baseline-rows", type=int, default=500)
    ap.add_argument("--contamination", type=float, default=0.02)
    ap.add_argument("--ast-sample", type=int, default=400, help="rows in the AST micro-bench")
    args = ap.parse_args()
    cfg = load_config("tiny")
    k = cfg.decontam.k_neighbors

    t0 = time.perf_counter()
    rows = synthetic(args.rows, args.contamination)
    print(f"synthetic set: {len(rows)} exercises in {time.perf_counter() - t0:.1f}s")

    a = bench_ast(rows, k, args.ast_sample)
    m = len(load_humaneval())
    print(
        f"[ast] {a['pairs']} pairs: {a['pairs_per_s']:,.0f} pairs/s (normalised, "
        f"{a['mean_chars']:.0f} chars) vs {a['baseline_ast_dump_pairs_per_s']:,.0f} pairs/s "
        f"(ast.dump baseline, {a['baseline_mean_chars']:.0f} chars): x{a['ratio']:.1f}"
    )
    n = args.rows
    print(
        f"[ast] pairs to compare for {n} rows: k-NN gate n*k = {n * k:,} vs all pairs "
        f"n*m = {n * m:,} (x{m / k:.0f} fewer); at the measured rate "
        f"{n * k / a['pairs_per_s']:.1f}s vs {n * m / a['pairs_per_s']:.1f}s"
    )

    from phi_ray.runtime import init_ray

    init_ray(cfg)
    with tempfile.TemporaryDirectory() as root:
        knn = bench_stage(rows, root, "knn", [])
        base = bench_stage(rows[: args.baseline_rows], root, "all", ["decontam.candidates=all"])
    print(
        f"[stage] k-NN + AST: {knn['rows']} rows in {knn['wall_s']:.1f}s = "
        f"{knn['rows_per_s']:.1f} rows/s; {knn['ast_pairs']:,} AST pairs; removed {knn['removed']}"
    )
    print(f"[stage] worker time split: {_split_line(knn['method_seconds'])}")
    print(
        f"[stage] baseline all-pairs AST (no embedding): {base['rows']} rows in "
        f"{base['wall_s']:.1f}s = {base['rows_per_s']:.1f} rows/s; {base['ast_pairs']:,} pairs; "
        f"split: {_split_line(base['method_seconds'])}"
    )
    print(f"[stage] rows/s ratio k-NN / all-pairs: x{knn['rows_per_s'] / base['rows_per_s']:.2f}")


if __name__ == "__main__":
    main()
