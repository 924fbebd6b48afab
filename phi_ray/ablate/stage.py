"""``phi-ray ablate``: does the classifier's filter train a better model at equal tokens?

From one run's ``ingest/corpus`` and ``score/scored``: pack each arm to the same number of
token windows (``arms.py``), pretrain the same model on each with the same settings, steps
and seeds (one Ray Train run per arm x seed), then measure each model (``metrics.py``).

Resumable unit by unit. Each unit is written atomically with its own ``_SUCCESS.json`` and
hash under ``<run>/.work/ablate/``: ``data`` (the arms' windows), ``train-<arm>-s<k>`` and
``eval-<arm>-s<k>``; a unit's hash folds in the fingerprint of the unit it reads, so a
killed ablation resumes with finished arm/seeds skipped, and a changed config redoes only
what it changes. The stage's own output, ``<run>/ablate/`` (per arm/seed ``metrics.json``,
``curves/``, ``summary.json``, ``table.txt``), is assembled last.

Arm x seed units run side by side as far as the cluster holds their training workers
(``ablate.parallel_runs``, default: the cluster's CPUs, or GPUs, over one run's), each its own
Ray Train run; each unit is evaluated as soon as it has trained, so evaluation overlaps the
other units' training. ``parallel_runs: 1`` runs them one after the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from phi_ray.ablate import arms as arms_mod
from phi_ray.ablate import metrics
from phi_ray.config import Config
from phi_ray.runs import RunDir, StageResult, resolve_fs

log = logging.getLogger("phi_ray.ablate")
STAGE = "ablate"
PHASES = ("data", "train", "evaluate")
# The paper's 350M model at equal steps, HumanEval pass@1 (%): section 2 / figure 2.1 of
# arXiv 2306.11644 ("filtered Stack" vs "unfiltered Stack").
PAPER_350M = {"filtered": 17.68, "random": 12.19}
CURVE_POINTS = 6


def _h(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def units(cfg: Config) -> list[tuple[str, int]]:
    """(arm, seed) of every training run, the same seeds for every arm. Seeds outermost: an
    interrupted ablation already has every arm at its first seeds, a comparison to look at."""
    return [(arm, cfg.run.seed + k) for k in range(cfg.ablate.seeds) for arm in cfg.ablate.arms]


def train_config(cfg: Config, seed: int) -> Config:
    """The pretraining settings every arm shares, with this unit's seed and steps."""
    steps = cfg.ablate.max_steps or cfg.pretrain.max_steps
    # At least CURVE_POINTS held-out evaluations per run, so the report's held-out curves are
    # curves (tiny's pretrain evaluates every 60 of 120 steps: two points). A few batches each.
    every = min(cfg.pretrain.eval_every, max(1, steps // CURVE_POINTS))
    tc = dataclasses.replace(cfg.pretrain, max_steps=steps, eval_every=every)
    return dataclasses.replace(cfg, pretrain=tc, run=dataclasses.replace(cfg.run, seed=seed))


def parallelism(cfg: Config, n_units: int) -> int:
    """How many arm x seed units run at once: ``ablate.parallel_runs``, else as many Ray Train
    runs as the cluster's CPUs (GPUs on GPU runs) hold side by side; at least 1."""
    n = cfg.ablate.parallel_runs
    if n is None:
        import ray

        tc, res = cfg.pretrain, ray.cluster_resources()
        have, need = ((res.get("GPU", 0.0), tc.num_workers) if tc.use_gpu else
                      (res.get("CPU", 0.0), tc.num_workers * tc.cpus_per_worker))  # fmt: skip
        n = int(have // need)
    return max(1, min(n, n_units))


def _data(cfg: Config, run: RunDir, work: RunDir) -> StageResult:
    a = cfg.ablate
    sel = (a.arms, a.holdout_fraction, a.random_oversample, cfg.run.seed)
    h = _h(run.config_hash(cfg, ("pack",), upstream=("ingest", "score")), sel)
    with work.stage("data", h) as out:
        if out.skipped:
            return out.result
        run.require("score", needed_by="ablate")
        info = arms_mod.build(cfg, run, out.tmp)
        log.info("ablate data: %d equal windows per arm (%s)", info["equal_windows"], info["arms"])
        return out.finish(counts={"equal_windows": info["equal_windows"]}, **info)


def _train(
    cfg: Config, run: RunDir, work: RunDir, arm: str, seed: int, in_task: bool = False
) -> StageResult:
    from phi_ray.train.stage import train_on_tokens

    tcfg = train_config(cfg, seed)
    name = f"train-{arm}-s{seed}"
    h = _h(tcfg.section_hash("model", "pretrain", "pack"), seed, work.output_fingerprint("data"))
    with work.stage(name, h) as out:
        if out.skipped:
            return out.result
        data = work.path("data")
        args = (tcfg, run, f"{data}/{arm}/train", f"{data}/{arms_mod.HELDOUT}/train", out.tmp,
                f"ablate-{arm}-s{seed}-{h}", work.path("ray"))  # fmt: skip
        if not in_task:
            info = train_on_tokens(*args)
        else:  # each run's driver in a Ray task, as Ray Tune drives Train V2 runs
            import ray

            info = ray.get(ray.remote(num_cpus=0)(train_on_tokens).remote(*args))
        return out.finish(counts={"steps": info["steps"]}, arm=arm, seed=seed, **info)


def _measure(model_dir: str, heldout_dir: str, cfg: Config) -> dict[str, Any]:
    """Ray task: solution loss per benchmark and held-out loss of one model."""
    import torch
    from transformers import AutoModelForCausalLM

    from phi_ray.model.tokenizer import get_tokenizer
    from phi_ray.train.data import TokenWindows

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    tok = get_tokenizer(cfg.pack.tokenizer)
    max_len = int(cfg.model.max_position_embeddings)
    bs = cfg.ablate.eval_batch_size
    out: dict[str, Any] = {"solution_loss": {}}
    for name, probs in metrics.benchmarks(cfg).items():
        pairs = metrics.encode_pairs(tok, probs)
        out["solution_loss"][name] = metrics.solution_loss(model, pairs, max_len, bs)
    held = TokenWindows(heldout_dir)
    n = min(len(held), cfg.ablate.eval_windows)
    out["heldout_loss"] = metrics.heldout_loss(model, held.take(np.arange(n)), bs)
    return out


# pass@k generates in this process and runs one sandbox: one unit's at a time, even when
# units run side by side (their trainings and loss measurements are Ray tasks).
_PASSK_LOCK = threading.Lock()


def _evaluate(cfg: Config, run: RunDir, work: RunDir, arm: str, seed: int) -> StageResult:
    import ray

    name = f"eval-{arm}-s{seed}"
    tname = f"train-{arm}-s{seed}"
    ecfg = metrics.passk_config(cfg)
    a = cfg.ablate  # only what a measurement depends on: more seeds or arms redo no unit
    h = _h(
        cfg.section_hash("evaluate", "model"),
        a.eval_windows,
        ecfg.limit,
        work.output_fingerprint(tname),
        work.output_fingerprint("data"),
    )
    with work.stage(name, h) as out:
        if out.skipped:
            return out.result
        model_dir = f"{work.path(tname)}/model"
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=1, num_gpus=gpus)(_measure)
        heldout = f"{work.path('data')}/{arms_mod.HELDOUT}/train"
        res = ray.get(task.remote(model_dir, heldout, cfg))
        passk = {}
        with _PASSK_LOCK:
            for bench, probs in metrics.benchmarks(cfg).items():
                probs = probs[: ecfg.limit] if ecfg.limit else probs
                passk[bench] = metrics.pass_at_k(model_dir, probs, ecfg, seed)
        res["pass_at_k"] = passk
        train = work.read_success(tname) or {}
        res["final_train_metrics"] = train.get("final_metrics", {})
        res.update(arm=arm, seed=seed, steps=train.get("steps"))
        run.write_json(f"{out.tmp}/metrics.json", res)
        sl = res["solution_loss"]["humaneval"]["loss"]
        return out.finish(counts={"humaneval_solution_loss": round(sl, 4)}, arm=arm, seed=seed)


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not v.size:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "min": float(v.min()), "max": float(v.max()),
            "n": int(v.size)}  # fmt: skip


def summarize(per_unit: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Mean and spread over seeds of each arm's measures."""
    out: dict[str, Any] = {}
    for arm in arms:
        rows = [r for r in per_unit if r["arm"] == arm]
        m: dict[str, Any] = {"seeds": [r["seed"] for r in rows]}
        for bench in rows[0]["solution_loss"] if rows else []:
            m[f"{bench}_solution_loss"] = _stats([r["solution_loss"][bench]["loss"] for r in rows])
        m["heldout_loss"] = _stats([r["heldout_loss"]["loss"] for r in rows])
        for bench in rows[0]["pass_at_k"] if rows else []:
            for k in [k for k in rows[0]["pass_at_k"][bench] if k.startswith("pass@")]:
                m[f"{bench}_{k}"] = _stats([r["pass_at_k"][bench][k] for r in rows])
        m["final_train_loss"] = _stats([r["final_train_metrics"].get("loss") for r in rows])
        out[arm] = m
    return out


def table(summary: dict[str, Any], equal_tokens: int | None = None) -> str:
    """The printed table: one row per arm, mean ± std over seeds."""
    keys = sorted({k for m in summary.values() for k, v in m.items() if isinstance(v, dict)})
    keys.sort(key=lambda k: (not k.endswith("solution_loss"), k))

    def cell(s: dict[str, Any], key: str) -> str:
        if s.get("mean") is None:
            return "-"
        if "pass@" in key:
            return f"{100 * s['mean']:.2f}% ± {100 * s['std']:.2f}"
        return f"{s['mean']:.4f} ± {s['std']:.4f}"

    header = ["arm", "seeds", *keys]
    rows = [[arm, str(len(m["seeds"])), *[cell(m.get(k, {}), k) for k in keys]]
            for arm, m in summary.items()]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    note = f"equal tokens per arm: {equal_tokens:,}; " if equal_tokens else ""
    lines.append(f"({note}mean ± sample std over seeds; losses in nats per token; "
                 f"paper 350M HumanEval pass@1: filtered {PAPER_350M['filtered']}% vs "
                 f"unfiltered {PAPER_350M['random']}%)")  # fmt: skip
    return "\n".join(lines)


def _copy_file(src: str, dst: str) -> None:
    (fs, s), (dfs, d) = resolve_fs(src), resolve_fs(dst)
    with fs.open_input_stream(s) as f, dfs.open_output_stream(d) as g:
        g.write(f.read())


def _assemble(cfg: Config, run: RunDir, work: RunDir) -> StageResult:
    names = [f"{a}-s{s}" for a, s in units(cfg)]
    h = _h(cfg.section_hash("ablate"), *[work.output_fingerprint(f"eval-{n}") for n in names])
    with run.stage(STAGE, h) as out:
        if out.skipped:
            return out.result
        per_unit = []
        for n in names:
            fs, d = resolve_fs(f"{out.tmp}/arms/{n}")
            fs.create_dir(d, recursive=True)
            _copy_file(f"{work.path('eval-' + n)}/metrics.json", f"{out.tmp}/arms/{n}/metrics.json")
            _copy_file(
                f"{work.path('train-' + n)}/metrics.jsonl", f"{out.tmp}/arms/{n}/curve.jsonl"
            )
            with fs.open_input_stream(f"{d}/metrics.json") as f:
                per_unit.append(json.loads(f.read().decode()))
        data = work.read_success("data") or {}
        summary = summarize(per_unit, cfg.ablate.arms)
        text = table(summary, data.get("equal_tokens"))
        run.write_json(f"{out.tmp}/summary.json", {
            "arms": summary, "data": {k: data.get(k) for k in
                                      ("equal_windows", "equal_tokens", "heldout_windows",
                                       "selection", "arms", "kept", "rows")},
            "paper_350m_humaneval_pass1": PAPER_350M, "units": names,
        })  # fmt: skip
        fs, d = resolve_fs(out.tmp)
        with fs.open_output_stream(f"{d}/table.txt") as f:
            f.write((text + "\n").encode())
        return out.finish(counts={"units": len(names), "equal_tokens": data.get("equal_tokens")},
                          table=text)  # fmt: skip


def run(cfg: Config, run: RunDir, to: str | None = None) -> StageResult:
    """Data, then every arm x seed's training and evaluation, then the summary (``to``: stop
    after ``data``, ``train`` or ``evaluate``, which is everything)."""
    from phi_ray.runtime import init_ray

    if to is not None and to not in PHASES:
        raise ValueError(f"ablate --to must be one of {PHASES}, got {to!r}")
    init_ray(cfg)
    run.require("score", needed_by="ablate")
    work = RunDir(run.path(".work"), STAGE)
    data = _data(cfg, run, work)
    if to == "data":
        return data
    todo = units(cfg)
    n = parallelism(cfg, len(todo))
    log.info("ablate: %d arm x seed units, %d at a time", len(todo), n)

    def unit(u: tuple[str, int], in_task: bool) -> StageResult:
        """Train one unit, then evaluate it while the others still train."""
        res = _train(cfg, run, work, *u, in_task=in_task)
        return res if to == "train" else _evaluate(cfg, run, work, *u)

    if n == 1:  # main thread: Ray Train's Ctrl-C handling needs it
        done = [unit(u, False) for u in todo]
    else:
        with ThreadPoolExecutor(max_workers=n) as pool:
            done = list(pool.map(lambda u: unit(u, True), todo))
    if to == "train":
        return done[-1]
    return _assemble(cfg, run, work)


__all__ = [
    "PAPER_350M",
    "PHASES",
    "parallelism",
    "run",
    "summarize",
    "table",
    "train_config",
    "units",
]
