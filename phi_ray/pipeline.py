"""``phi-ray run``: the stages in order, each skipped when its output matches its config."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field

from phi_ray.config import Config
from phi_ray.runs import RunDir, StageResult
from phi_ray.runtime import init_ray
from phi_ray.stages import ORDER, PIPELINE

log = logging.getLogger("phi_ray.pipeline")


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage, the cause and how to resume."""


@dataclass
class PipelineResult:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # output already matched its config
    missing: list[str] = field(default_factory=list)  # not built in this version
    blocked: list[str] = field(default_factory=list)  # an upstream stage is missing
    results: dict[str, StageResult] = field(default_factory=dict)


def _select(start: str | None, stop: str | None) -> list[str]:
    for name in (start, stop):
        if name is not None and name not in ORDER:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
    i = ORDER.index(start) if start else 0
    j = ORDER.index(stop) + 1 if stop else len(ORDER)
    if i >= j:
        raise ValueError(f"--from {start} comes after --to {stop}")
    return ORDER[i:j]


def resume_command(
    cfg: Config, stage: str, overrides: list[str] | None = None, stop: str | None = None
) -> str:
    to = f" --to {stop}" if stop else ""
    sets = "".join(f" --set {o}" for o in overrides or [])
    root = "" if cfg.run.root == "runs" else f" --runs-dir {cfg.run.root}"
    return f"phi-ray run --preset {cfg.preset} --run {cfg.run.name} --from {stage}{to}{sets}{root}"


def run_pipeline(
    cfg: Config,
    start: str | None = None,
    stop: str | None = None,
    overrides: list[str] | None = None,
    echo=print,
) -> PipelineResult:
    """Run the selected stages; stop at the first failure with the command that resumes."""
    names = _select(start, stop)
    run = RunDir.from_config(cfg)
    init_ray(cfg)
    out = PipelineResult()
    unavailable: set[str] = set()
    for stage in PIPELINE:
        if stage.name not in names:
            continue
        fn = stage.load()
        if fn is None:
            out.missing.append(stage.name)
            unavailable.add(stage.name)
            echo(f"[{stage.name}] not built in this version of phi-ray; skipped")
            continue
        lacking = [n for n in stage.needs if n in unavailable]
        if lacking:
            out.blocked.append(stage.name)
            unavailable.add(stage.name)
            echo(f"[{stage.name}] skipped: needs {', '.join(lacking)}, which this version lacks")
            continue
        echo(f"[{stage.name}] {stage.help}")
        t0 = time.time()
        try:
            res = fn(cfg, run)
        except KeyboardInterrupt as e:
            detail = f" ({e})" if str(e) else ""
            echo(
                f"[{stage.name}] interrupted{detail}; resume with:\n"
                f"  {resume_command(cfg, stage.name, overrides, stop)}"
            )
            raise
        except Exception as e:
            log.debug("stage %s failed", stage.name, exc_info=True)
            raise StageFailed(
                f"stage '{stage.name}' failed: {type(e).__name__}: {e}\n"
                f"{traceback.format_exc(limit=-3)}"
                f"resume with:\n  {resume_command(cfg, stage.name, overrides, stop)}"
            ) from e
        out.results[stage.name] = res
        if res.skipped:
            out.skipped.append(stage.name)
            echo(f"[{stage.name}] up to date ({res.path}); skipped")
        else:
            out.ran.append(stage.name)
            echo(f"[{stage.name}] done in {time.time() - t0:.1f}s -> {res.path}")
    return out
