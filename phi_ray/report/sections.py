"""The report's sections. Each reads one stage's artifacts and returns HTML, or ``None``
when that stage has not run (the report then says so instead of showing an empty plot)."""

from __future__ import annotations

import html as _html
import json
from typing import Any

import pyarrow.dataset as pads

from phi_ray.report import plots
from phi_ray.runs import RunDir
from phi_ray.stages import ORDER

# The paper's pass@1 (%), Table 1 and section 3 of arXiv 2306.11644.
PAPER_PASS1 = {
    "phi-1": {"humaneval": 50.6, "mbpp": 55.5},
    "phi-1-small": {"humaneval": 45.0},
    "phi-1-base": {"humaneval": 29.0},
}


def _read_json(run: RunDir, *parts: str) -> Any | None:
    try:
        with run.fs.open_input_stream(run._fs_path(run.path(*parts))) as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return None


def _read_jsonl(run: RunDir, *parts: str) -> list[dict]:
    try:
        with run.fs.open_input_stream(run._fs_path(run.path(*parts))) as f:
            text = f.read().decode()
    except (FileNotFoundError, OSError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _column(run: RunDir, parts: tuple[str, ...], column: str) -> list | None:
    path = run._fs_path(run.path(*parts))
    try:
        ds = pads.dataset(path, filesystem=run.fs, format="parquet")
        if column not in ds.schema.names:
            return None
        return ds.to_table(columns=[column]).column(column).to_pylist()
    except (FileNotFoundError, OSError, ValueError):
        return None


def _flat(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flat(v, key + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out.append((key, v))
    return out


def funnel(run: RunDir) -> str | None:
    """Files and tokens through the stages, drop reasons, and each stage's counts."""
    succ = {s: run.read_success(s) for s in ORDER}
    done = {s: v for s, v in succ.items() if v}
    if not done:
        return None
    steps: list[tuple[str, float, float]] = []  # (label, files, tokens)
    ing = done.get("ingest", {}).get("counts", {})
    if ing:
        steps.append(("corpus in", ing.get("files_in", 0), ing.get("tokens_in", 0)))
        steps.append(("corpus out", ing.get("files_out", 0), ing.get("tokens_out", 0)))
    sc = done.get("score", {}).get("counts", {})
    if sc:
        steps.append(("filtered (kept)", sc.get("rows_out", 0), sc.get("tokens_out", 0)))
    syn = done.get("synth", {}).get("counts", {})
    if syn:
        steps.append(("textbooks", syn.get("textbooks_kept", 0), 0))
        steps.append(("exercises", syn.get("exercises_kept", 0), 0))
    dec = done.get("decontam", {}).get("counts", {})
    if dec:
        steps.append(("exercises decontaminated", dec.get("kept", 0), 0))
    pk = done.get("pack", {}).get("counts", {})
    for phase in ("pretrain", "finetune") if pk else ():
        windows = pk.get(f"{phase}_train_windows", 0) + pk.get(f"{phase}_val_windows", 0)
        tokens = pk.get(f"{phase}_train_tokens", 0) + pk.get(f"{phase}_val_tokens", 0)
        steps.append((f"packed {phase} (windows)", windows, tokens))
    html = ""
    if steps:
        labels = [s[0] for s in steps]
        html += plots.bars(labels, [s[1] for s in steps], "files / rows per step", log=True)
        if any(s[2] for s in steps):
            html += plots.bars(labels, [s[2] for s in steps], "tokens per step", log=True)
    flow = []
    for stage, v in done.items():
        counts = dict(_flat(v.get("counts", {})))
        row = _flow_row(stage, counts)
        if row:
            flow.append((stage, *row, round(v.get("duration_s", 0.0), 1)))
    if flow:
        html += plots.table(
            flow,
            [
                "stage",
                "of",
                "in",
                "out",
                "tokens in",
                "tokens out",
                "dropped, by reason",
                "seconds",
            ],
        )
    rows = []
    for stage, v in done.items():
        rows += [(stage, k, val) for k, val in _flat(v.get("counts", {}))]
    html += (
        "<details><summary>every count of every stage (from each _SUCCESS.json)</summary>"
        + plots.table(rows, ["stage", "count", "value"])
        + "</details>"
    )
    missing = [s for s in ORDER if s not in done and s != "report"]
    if missing:
        html += f"<p class=note>Not run (or not finished) in this run: {', '.join(missing)}.</p>"
    return html


# stage -> (what is counted, in, out, tokens in, tokens out): the count keys of its funnel row
FLOW = {
    "ingest": ("files", "files_in", "files_out", "tokens_in", "tokens_out"),
    "annotate": ("files rated", "sampled", "labelled", None, None),
    "classify": ("labels", "labels_in", "labels_joined", None, "tokens_embedded"),
    "score": ("files", "rows_in", "rows_out", "tokens_in", "tokens_out"),
    "synth": ("exercises", "exercises_generated", "exercises_kept", None, None),
    "decontam": ("exercises", "rows_in", "kept", None, None),
    "pack": ("pretrain windows", None, "pretrain_train_windows", None, "pretrain_train_tokens"),
    "pretrain": ("optimizer steps", None, "steps", None, "tokens"),
    "finetune": ("optimizer steps", None, "steps", None, "tokens"),
    "evaluate": ("samples -> passed", "humaneval_samples", "humaneval_passed", None, None),
}
_DROP_WORDS = ("drop", "removed", "failed", "skipped")


def _flow_row(stage: str, counts: dict[str, Any]) -> tuple | None:
    keys = FLOW.get(stage)
    if keys is None:
        return None
    cells = (keys[0], *("" if k is None else counts.get(k, "") for k in keys[1:]))
    drops = [
        (k.split(".")[-1].removeprefix("exercises_drop_"), v)
        for k, v in counts.items()
        if any(w in k for w in _DROP_WORDS)
        and isinstance(v, int | float)
        and v
        and not k.startswith("removed_tau")
        and k not in ("files_dropped",)
    ]
    text = ", ".join(f"{k} {v:,}" for k, v in sorted(drops, key=lambda kv: -kv[1]))
    return (*cells, text or "-")


def annotation(run: RunDir) -> str | None:
    succ = run.read_success("annotate")
    if not succ:
        return None
    scores = _column(run, ("annotate", "labels"), "score") or []
    html = f"<p>Judge: <b>{succ.get('judge', '?')}</b>; {len(scores):,} files rated.</p>"
    if scores:
        html += plots.hist(
            scores, "educational-value score (0-5)", bins=[x - 0.5 for x in range(7)]
        )
    cost = {k: v for k, v in _flat(succ) if "cost" in k or "usd" in k or "tokens" in k}
    if cost:
        html += plots.table(sorted(cost.items()), ["accounting", "value"])
    elif succ.get("judge") == "heuristic":
        html += (
            "<p>Cost: $0, no LLM calls: the offline heuristic judge rated these files "
            "(<code>llm.base_url</code> was not set). Set it for the paper's LLM judge; "
            "<code>phi-ray estimate</code> prices that run.</p>"
        )
    return html


def classifier(run: RunDir) -> str | None:
    m = _read_json(run, "classify", "classifier", "metrics.json")
    if not m:
        return None
    meta = _read_json(run, "classify", "classifier", "meta.json") or {}
    html = plots.table(
        [(k, v) for k, v in _flat(m) if not isinstance(v, (list, dict))], ["metric", "value"]
    )
    cm = m.get("confusion_matrix") or m.get("heldout", {}).get("confusion_matrix")
    if cm:
        html += plots.matrix(cm, ["low", "educational"], "confusion matrix (held out)")
    pr = m.get("pr_curve") or m.get("heldout", {}).get("pr_curve")
    if isinstance(pr, dict) and pr.get("precision") and pr.get("recall"):
        at = None
        if isinstance(m.get("recall"), float) and isinstance(m.get("precision"), float):
            at = (m["recall"], m["precision"], f"threshold {m.get('threshold', 0):.3f}")
        html += plots.lines(
            {"held out": (pr["recall"], pr["precision"])},
            "precision-recall (held out)",
            xlabel="recall",
            ylabel="precision",
            point=at,
        )
    if meta:
        html += (
            "<details><summary>classifier and embedder settings (meta.json)</summary>"
            + plots.table([(k, v) for k, v in _flat(meta)], ["meta", "value"])
            + "</details>"
        )
    return html


def quality_scores(run: RunDir) -> str | None:
    q = _column(run, ("score", "scored"), "quality")
    if not q:
        return None
    meta = _read_json(run, "classify", "classifier", "meta.json") or {}
    thr = meta.get("threshold")
    kept = sum(1 for v in q if thr is not None and v >= thr)
    html = plots.hist(q, "quality score over the whole corpus", vline=thr, xlabel="P(educational)")
    if thr is not None:
        html += f"<p>{kept:,} of {len(q):,} files at or above the threshold {thr:.3f}.</p>"
    return html


def synth(run: RunDir) -> str | None:
    succ = run.read_success("synth")
    if not succ:
        return None
    div = _read_json(run, "synth", "diversity.json") or {}
    rows = [(k, v) for k, v in _flat(div)]
    html = plots.table(rows, ["diversity", "value"]) if rows else "<p>No diversity report.</p>"
    return html


def decontam(run: RunDir) -> str | None:
    rep = _read_json(run, "decontam", "report.json")
    if not rep:
        return None
    taus = sorted(rep.get("taus", []))
    succ = (run.read_success("decontam") or {}).get("counts", {})
    removed = []
    for t in taus:
        key = [
            k for k in succ if k.endswith(f"removed_tau={t}") or k.endswith(f"removed_tau={t:g}")
        ]
        removed.append(sum(succ[k] for k in key))
    html = ""
    if taus and any(removed):
        html += plots.bars([f"τ={t}" for t in taus], removed, "rows removed per τ")
    if taus:
        used = rep.get("use_tau")
        html += plots.table(
            [
                (f"{t:g}" + (" (used)" if t == used else ""), r)
                for t, r in zip(taus, removed, strict=True)
            ],
            ["τ (embedding+AST similarity)", "rows removed"],
        )
    html += plots.table(
        sorted((k, v) for k, v in succ.items() if not k.startswith("removed_tau")),
        ["count", "value"],
    )
    split = _read_json(run, "decontam", "humaneval_split.json")
    if split:
        html += (
            f"<p>HumanEval split: {len(split.get('similar', []))} similar, "
            f"{len(split.get('non_similar', []))} non-similar problems.</p>"
        )
    return html


def training(run: RunDir, stage: str) -> str | None:
    rows = _read_jsonl(run, stage, "metrics.jsonl")
    if not rows:
        return None
    train = [r for r in rows if "loss" in r and "step" in r]
    evals = [r for r in rows if "val_loss" in r and "step" in r]
    html = ""
    series = {"train": ([r["step"] for r in train], [r["loss"] for r in train])}
    if evals:
        series["validation"] = ([r["step"] for r in evals], [r["val_loss"] for r in evals])
    html += plots.lines(series, f"{stage} loss", ylabel="loss")
    for key, title in (("lr", "learning rate"), ("tokens_per_s", "tokens/s"), ("mfu", "MFU")):
        pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float))]
        if pts:
            html += plots.lines(
                {key: ([p[0] for p in pts], [p[1] for p in pts])}, f"{stage} {title}"
            )
    return html


def _pass_keys(summaries: list[dict]) -> list[str]:
    ks = {k for s in summaries for k in s if k.startswith("pass@")}
    return sorted(ks, key=lambda k: int(k.split("@")[1]))


def evaluation(run: RunDir) -> str | None:
    succ = run.read_success("evaluate")
    if not succ:
        return None
    found = {}
    for bench in ("humaneval", "mbpp"):
        s = _read_json(run, "evaluate", bench, "summary.json")
        if s:
            found[bench] = s
    if not found:
        return None
    ks = _pass_keys(list(found.values())) or ["pass@1"]

    def pct(v: Any) -> Any:
        return "" if v is None else round(100 * v, 2)

    rows = []
    for bench, s in found.items():
        paper = [PAPER_PASS1[m].get(bench) for m in PAPER_PASS1]
        rows.append(
            (
                bench,
                s.get("problems", s.get("n_problems", "")),
                *(pct(s.get(k)) for k in ks),
                *("" if v is None else v for v in paper),
            )
        )
        for split, vals in (s.get("split") or {}).items():
            rows.append(
                (
                    f"{bench} ({split.replace('_', '-')})",
                    vals.get("problems", ""),
                    *(pct(vals.get(k)) for k in ks),
                    *([""] * len(PAPER_PASS1)),
                )
            )
    html = plots.table(
        rows,
        [
            "benchmark",
            "problems",
            *(f"this run {k} %" for k in ks),
            *(f"paper {m} pass@1 %" for m in PAPER_PASS1),
        ],
    )
    outcomes = [
        (bench, k, v) for bench, s in found.items() for k, v in (s.get("outcomes") or {}).items()
    ]
    if outcomes:
        html += "<p>How the failing samples ended (sandboxed execution):</p>"
        html += plots.table(
            sorted(outcomes, key=lambda r: -r[2]), ["benchmark", "outcome", "samples"]
        )
    split = any("split" in s for s in found.values())
    if split:
        html += (
            "<p class=note>similar / non-similar: HumanEval problems with / without a near "
            "match in the finetuning exercises (the paper's section 5 split, from decontam).</p>"
        )
    return html


def costs(run: RunDir, cfg: Any) -> str | None:
    rows = []
    total = 0.0
    for s in ORDER:
        succ = run.read_success(s)
        if not succ:
            continue
        usd = [v for k, v in _flat(succ) if k.endswith("cost_usd") and isinstance(v, (int, float))]
        spent = float(sum(usd)) if usd else 0.0
        total += spent
        rows.append((s, round(succ.get("duration_s", 0.0), 1), round(spent, 4)))
    if not rows:
        return None
    html = "<h3>This run</h3>" + plots.table(
        [*rows, ("total", round(sum(r[1] for r in rows), 1), round(total, 4))],
        ["stage", "wall seconds", "LLM USD"],
    )
    return html + _estimate_table(cfg, run)


def _estimate_table(cfg: Any, run: RunDir) -> str:
    """What this preset costs on the configured cluster prices (``phi-ray estimate``)."""
    from phi_ray.report.estimate import basis, estimate, measured_corpus_tokens

    measured = measured_corpus_tokens(run)
    try:
        lines = estimate(cfg, float(measured) if measured else None)
    except ValueError as e:  # e.g. a model with no price: say so rather than fail the report
        return f"<p class=note>No estimate: {e}</p>"
    rows = [(ln.item, int(ln.tokens), ln.gpu_hours, ln.usd, ln.detail) for ln in lines]
    rows.append(
        (
            "total",
            "",
            sum(ln.gpu_hours for ln in lines),
            sum(ln.usd for ln in lines),
            basis(cfg),
        )
    )
    return (
        f"<h3>Estimate for the {cfg.preset} preset at cluster prices (phi-ray estimate)</h3>"
        + plots.table(rows, ["item", "tokens", "GPU-hours", "USD", "from"])
        + "<p class=note>For scale: the paper's phi-1 run (770 A100-hours of pretraining, "
        "GPT-4 annotation, GPT-3.5 textbooks and exercises) is put at about $6,500; "
        "<code>phi-ray estimate --preset phi1</code> prices that recipe with these formulas.</p>"
    )


def ablation(run: RunDir) -> str | None:
    """``phi-ray ablate``: each arm's curves, the solution-loss table (mean ± spread over
    seeds) and pass@1 beside the paper's 350M filtered / unfiltered figures."""
    summary = _read_json(run, "ablate", "summary.json")
    if not summary:
        return None
    arms = summary.get("arms", {})
    data = summary.get("data", {})
    html = (
        f"<p>{len(arms)} arms of {data.get('equal_tokens') or 0:,} training tokens each "
        f"({data.get('equal_windows')} windows); held-out set: {data.get('heldout_windows')} "
        "windows of the corpus, in no arm. Mean ± sample standard deviation over seeds.</p>"
    )
    for key, title in (("val_loss", "held-out loss"), ("loss", "training loss")):
        series = {}
        for unit in summary.get("units", []):
            rows = _read_jsonl(run, "ablate", "arms", unit, "curve.jsonl")
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if pts:
                series[unit] = ([p[0] for p in pts], [p[1] for p in pts])
        if series:
            html += plots.lines(series, f"ablation: {title} by step", ylabel="loss (nats)")
            # The legend is inside the image: name each curve and its last point in text too.
            last = "; ".join(f"{u}: {len(x)} points, {y[-1]:.4g} at step {x[-1]}"
                             for u, (x, y) in series.items())  # fmt: skip
            html += f"<p class='note'>{title} curves: {_html.escape(last)}</p>"

    def ms(s: Any, pct: bool = False) -> str:
        if not isinstance(s, dict) or s.get("mean") is None:
            return "-"
        f = 100.0 if pct else 1.0
        return f"{f * s['mean']:.4g} ± {f * s['std']:.2g}"

    benches = sorted({k[: -len("_solution_loss")] for m in arms.values() for k in m
                      if k.endswith("_solution_loss")})  # fmt: skip
    paper = summary.get("paper_350m_humaneval_pass1", {})
    header = ["arm", "seeds", *[f"{b} solution loss" for b in benches], "held-out loss",
              "HumanEval pass@1 (%)", "paper 350M pass@1 (%)"]  # fmt: skip
    rows = [
        [arm, len(m.get("seeds", [])), *[ms(m.get(f"{b}_solution_loss")) for b in benches],
         ms(m.get("heldout_loss")), ms(m.get("humaneval_pass@1"), pct=True),
         paper.get(arm, "-")]
        for arm, m in arms.items()
    ]  # fmt: skip
    return (
        html
        + plots.table(rows, header)
        + (
            "<p class='note'>Solution loss: mean per-token loss of the benchmark's canonical "
            "solutions given their prompts, solution tokens only. The paper's figures are its "
            "350M model on the filtered vs the unfiltered Stack (random = unfiltered).</p>"
        )
    )
