"""The report stage: one self-contained HTML page about a run (``runs/<run>/report.html``)."""

from __future__ import annotations

import datetime as dt
import html
import logging

from phi_ray.config import Config, dump_config
from phi_ray.report import sections
from phi_ray.runs import RunDir, StageResult
from phi_ray.stages import ORDER

log = logging.getLogger("phi_ray.report")

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{margin-bottom:0} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f4f4f4}
img{max-width:100%;margin:.3em .5em .3em 0} .note{color:#777}
details pre{font-size:12px;background:#f8f8f8;padding:1em;overflow:auto}
"""


def _sections(cfg: Config, run: RunDir) -> list[tuple[str, str | None]]:
    # The ablation is its own command, not a pipeline stage: its section appears once it ran.
    ablation = sections.ablation(run)
    optional = [("Ablation: classifier-filtered vs random code at equal tokens", ablation)]
    return [
        ("Funnel: files and tokens through the pipeline", sections.funnel(run)),
        ("Annotation: score distribution and cost", sections.annotation(run)),
        ("Quality classifier", sections.classifier(run)),
        ("Quality scores over the corpus", sections.quality_scores(run)),
        ("Synthetic data diversity", sections.synth(run)),
        ("Decontamination: the τ sweep", sections.decontam(run)),
        ("Pretraining", sections.training(run, "pretrain")),
        ("Finetuning", sections.training(run, "finetune")),
        ("Evaluation: pass@k beside the paper", sections.evaluation(run)),
        *[(title, body) for title, body in optional if body is not None],
        ("Cost and time", sections.costs(run, cfg)),
    ]


def render(cfg: Config, run: RunDir) -> tuple[str, int]:
    """The page, and how many sections had data."""
    parts = []
    filled = 0
    for title, body in _sections(cfg, run):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if body is None:
            parts.append("<p class=note>This stage has not run in this run.</p>")
        else:
            filled += 1
            parts.append(body)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>phi-ray run {html.escape(run.name)}"
        f"</title><style>{_CSS}</style></head><body>"
        f"<h1>phi-ray run <code>{html.escape(run.name)}</code></h1>"
        f"<p class=note>preset {html.escape(cfg.preset)} &middot; {when} &middot; {html.escape(run.uri)}</p>"
        + "".join(parts)
        + f"<h2>Configuration</h2><details><summary>resolved config</summary><pre>"
        f"{html.escape(dump_config(cfg))}</pre></details></body></html>"
    )
    return page, filled


def run(cfg: Config, run: RunDir) -> StageResult:
    """Write ``report/report.html`` and a copy at ``<run>/report.html``."""
    upstream = (*(s for s in ORDER if s != "report"), "ablate")  # ablate: its own command
    with run.stage("report", run.config_hash(cfg, ("run",), upstream)) as out:
        if out.skipped:
            return out.result
        page, filled = render(cfg, run)
        data = page.encode()
        for target in (f"{out.tmp}/report.html", run.path("report.html")):
            with run.fs.open_output_stream(run._fs_path(target)) as f:
                f.write(data)
        log.info("report: %d sections with data -> %s", filled, run.path("report.html"))
        return out.finish(
            counts={"sections_filled": filled, "bytes": len(data)}, report=run.path("report.html")
        )
