"""``phi-ray pretrain`` / ``phi-ray finetune``: Ray Train ``TorchTrainer`` runs of phi-1.

Checkpoints live in Ray Train's storage under ``run.work_path(<phase>)/ray-<hash>/``; the
name carries the config hash, so rerunning an interrupted stage with the same config
resumes from its latest checkpoint (Ray Train reloads its checkpoint snapshot), while a
changed config starts afresh. ``FailureConfig(max_failures)`` restarts a crashed worker
group from the latest checkpoint within one run.

Outputs: ``<phase>/model/`` (Hugging Face format; finetune keeps the best validation step
when ``keep_best``), ``<phase>/metrics.jsonl`` (one line per step), ``<phase>/_SUCCESS.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from typing import Any

from phi_ray.config import Config, TrainConfig
from phi_ray.runs import RunDir, StageResult, resolve_fs

log = logging.getLogger("phi_ray.train")

# Test hook: "STEP:MARKER[:raise]" crashes the last worker once at STEP (see loop._maybe_fault).
FAULT_ENV = "PHI_RAY_TRAIN_FAULT"


def _fault_from_env() -> dict[str, Any] | None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    step, marker, *mode = spec.split(":")
    return {"step": int(step), "marker": marker, "mode": mode[0] if mode else "exit"}


def log_spec(cfg: Config, run: RunDir, phase: str, h: str) -> dict[str, Any]:
    """Where rank 0 logs (see :class:`phi_ray.train.metrics.TrainLogger`): metrics.jsonl in
    the stage's work directory, TensorBoard events under ``<run>/tensorboard/<phase>/<h>``
    (both local or on the object store), W&B when a project is set; console lines when the
    driver has no terminal (``ray job submit``, a RayJob), where no progress bar can render.
    """
    tc: TrainConfig = getattr(cfg, phase)
    wandb = None
    if tc.wandb_project:
        wandb = {
            "project": tc.wandb_project,
            "name": f"{run.name}/{phase}",
            "id": f"{run.name}-{phase}-{h}".replace("/", "-"),
            "resume": "allow",
            "config": {phase: dataclasses.asdict(tc), "model": dataclasses.asdict(cfg.model)},
        }
    return {
        "phase": phase,
        "metrics": run.path(".work", phase, f"logs-{h}"),
        "tensorboard": run.path("tensorboard", phase, h) if tc.tensorboard else None,
        "wandb": wandb,
        "lines": not sys.stdout.isatty(),
    }


def loop_config(
    cfg: Config, run: RunDir, phase: str, init_from: str | None, logs: dict[str, Any] | None
) -> dict[str, Any]:
    """The plain-dict config each Ray Train worker gets (no Config pickling surprises)."""
    tc: TrainConfig = getattr(cfg, phase)
    tokens = run.path("pack", phase)
    val = f"{tokens}/val"
    has_val = (run.read_success("pack") or {}).get("counts", {}).get(f"{phase}_val_windows", 1)
    return {
        "train": dataclasses.asdict(tc),
        "model": dataclasses.asdict(cfg.model),
        "seed": cfg.run.seed,
        "seq_len": cfg.pack.seq_len,
        "train_path": f"{tokens}/train",
        "val_path": val if has_val else None,
        "init_from": init_from,
        "logs": logs,
        "threads": tc.cpus_per_worker if not tc.use_gpu else None,
        "progress": tc.progress and sys.stderr.isatty(),
        "fault": _fault_from_env(),
    }


# Ray starts every worker process at nice 15 (its worker_niceness) so that the raylet and GCS
# win the CPU. A training worker is the job itself: at 15 it loses each core to any process
# at the normal priority (a plain PyTorch loop runs at 0), which on a shared node was the
# Ray-vs-plain gap of bench/train.py. Ray reads this at the worker's start; no privileges.
WORKER_RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": "0"}}


def make_trainer(cfg: Config, run: RunDir, phase: str, storage: str, name: str, loop_cfg: dict):
    """The TorchTrainer for one phase (DDP on NCCL or gloo; FSDP2 when asked).

    A GPU step that cannot fit the GPUs it will get is refused here, before any worker
    starts (:class:`phi_ray.plan.PlanError`, naming the fix).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from phi_ray.plan import check_before_start
    from phi_ray.train.loop import train_loop

    check_before_start(cfg, phase)
    loop_cfg = {**loop_cfg, "refusal_path": refusal_path(storage, name)}
    tc: TrainConfig = getattr(cfg, phase)
    resources = {"CPU": tc.cpus_per_worker} | ({"GPU": 1} if tc.use_gpu else {})
    return TorchTrainer(
        train_loop,
        train_loop_config=loop_cfg,
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            worker_runtime_env=WORKER_RUNTIME_ENV,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints),
        ),
    )


@contextlib.contextmanager
def _ctrl_c_is_an_interrupt(checkpoints: str):
    """Make Ctrl-C during ``trainer.fit()`` a ``KeyboardInterrupt`` the pipeline can report.

    Ray Train registers its own SIGINT handler inside ``fit()``: it aborts the controller,
    and the driver's blocked ``ray.get`` then raises ``SystemExit``, which would end the
    process with no word on how to resume. Ray also leaves that handler installed, so a
    later Ctrl-C (during evaluate, say) would ``abort`` a dead controller and exit 0.
    """
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except SystemExit as e:
        raise KeyboardInterrupt(f"its checkpoints are kept in {checkpoints}") from e
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def refusal_path(storage: str, name: str) -> str:
    """Where rank 0 writes why the step cannot fit its device (beside the run's checkpoints)."""
    return f"{storage}/{name}/plan_refused.txt"


def raise_refusal(path: str) -> None:
    """A worker found the step cannot fit its device and returned instead of training
    (see :func:`phi_ray.train.loop.plan_refusal`): the same :class:`PlanError` here."""
    import pyarrow.fs as pafs

    from phi_ray.plan import PlanError

    fs, p = resolve_fs(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        return
    with fs.open_input_stream(p) as f:
        msg = f.read().decode()
    fs.delete_file(p)  # a rerun with a fitting config must not find it
    raise PlanError(msg)


def _copy(src: str, dst: str) -> None:
    """Copy a file or directory within the run (local or object store), when it exists."""
    import pyarrow.fs as pafs

    (fs, src_path), (_, dst_path) = resolve_fs(src), resolve_fs(dst)
    if fs.get_file_info(src_path).type != pafs.FileType.NotFound:
        pafs.copy_files(src_path, dst_path, fs, fs)


def _export(result: Any, cfg: Config, phase: str, run: RunDir, out_dir: str) -> dict[str, Any]:
    """The final (or best) weights of the last checkpoint as ``<out_dir>/model``.

    Object-store runs export into a local temporary directory first (``save_pretrained``
    writes local files), then upload it.
    """
    import tempfile

    import pyarrow.fs as pafs
    import torch

    from phi_ray.train.checkpoint import export_hf

    if result.checkpoint is None:
        raise RuntimeError(f"{phase}: training finished without a checkpoint")
    tc: TrainConfig = getattr(cfg, phase)
    with result.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "trainer.pt"), weights_only=False)
        best = os.path.join(d, "best_model.pt")
        use_best = tc.keep_best and os.path.exists(best)
        weights = torch.load(best if use_best else os.path.join(d, "model.pt"), weights_only=True)
    if run.local:
        export_hf(weights, cfg.model, f"{out_dir}/model", cfg.pack.tokenizer)
    else:
        with tempfile.TemporaryDirectory(prefix="phi-ray-export-") as d:
            export_hf(weights, cfg.model, d, cfg.pack.tokenizer)
            fs, dest = resolve_fs(f"{out_dir}/model")
            pafs.copy_files(d, dest, pafs.LocalFileSystem(), fs)
    return {
        "steps": state["step"],
        "exported": "best" if use_best else "final",
        "best_step": state["best_step"],
        "best_val_loss": state["best_val"],
    }


def _train(cfg: Config, run: RunDir, phase: str) -> StageResult:
    from phi_ray.runtime import init_ray

    init_ray(cfg)
    upstream = ("pack",) if phase == "pretrain" else ("pack", "pretrain")
    h = run.config_hash(cfg, ("model", phase), upstream=upstream) + f"-seed{cfg.run.seed}"
    with run.stage(phase, h) as out:
        if out.skipped:
            return out.result
        from phi_ray.plan import check_before_start

        check_before_start(cfg, phase)  # a step that cannot fit: refused before anything runs
        run.require("pack", needed_by=phase)
        tc: TrainConfig = getattr(cfg, phase)
        init_from = None
        if phase == "finetune":  # from the run's pretrained model unless told otherwise
            init_from = tc.init_from or f"{run.require('pretrain', needed_by=phase)}/model"
        work = run.work_path(phase)
        logs = log_spec(cfg, run, phase, h)
        loop_cfg = loop_config(cfg, run, phase, init_from, logs)
        trainer = make_trainer(cfg, run, phase, work, f"ray-{h}", loop_cfg)
        log.info(
            "%s: %d steps on %d workers; checkpoints in %s",
            phase,
            tc.max_steps,
            tc.num_workers,
            work,
        )
        try:
            with _ctrl_c_is_an_interrupt(f"{work}/ray-{h}"):
                result = trainer.fit()
        except Exception as e:  # TrainingFailedError and friends: say how to resume
            raise RuntimeError(
                f"{phase} failed ({type(e).__name__}: {e}); its checkpoints are kept in "
                f"{work}/ray-{h}: rerun `phi-ray {phase} --run {run.name}` with the same "
                "config to resume from the latest one"
            ) from e
        raise_refusal(refusal_path(work, f"ray-{h}"))
        info = _export(result, cfg, phase, run, out.tmp)
        _copy(f"{logs['metrics']}/metrics.jsonl", f"{out.tmp}/metrics.jsonl")
        final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
        return out.finish(
            counts={"steps": info["steps"], "tokens": int(final.get("tokens", 0))},
            final_metrics=final,
            mfu_formula="(6*N + 12*L*H*Q*T) * tokens_per_s / (peak_flops * n_devices)",
            checkpoint=result.checkpoint.path,
            tensorboard=logs["tensorboard"],
            **info,
        )


def pretrain(cfg: Config, run: RunDir) -> StageResult:
    """Pretrain phi-1-base on ``pack/pretrain`` with Ray Train; exports ``pretrain/model/``."""
    return _train(cfg, run, "pretrain")


def finetune(cfg: Config, run: RunDir) -> StageResult:
    """Finetune ``pretrain/model/`` on ``pack/finetune``; exports the best ``finetune/model/``."""
    return _train(cfg, run, "finetune")


def train_on_tokens(
    cfg: Config,
    run: RunDir,
    train_path: str,
    val_path: str | None,
    out_dir: str,
    name: str,
    storage: str,
    phase: str = "pretrain",
) -> dict[str, Any]:
    """One Ray Train run of ``phase``'s settings from scratch on the windows at ``train_path``.

    Exports ``<out_dir>/model`` and copies ``metrics.jsonl`` beside it; ``cfg.run.seed`` seeds
    the init and the batch order. Checkpoints go to ``<storage>/ray-<name>``, so a rerun with
    the same ``name`` resumes from the latest one. ``phi-ray ablate`` trains each arm x seed
    through here (the pretrain stage's own inputs and outputs are fixed to ``pack/``).
    """
    logs = log_spec(cfg, run, phase, name)
    loop_cfg = loop_config(cfg, run, phase, None, logs)
    loop_cfg.update(train_path=train_path, val_path=val_path)
    trainer = make_trainer(cfg, run, phase, storage, f"ray-{name}", loop_cfg)
    with _ctrl_c_is_an_interrupt(f"{storage}/ray-{name}"):
        result = trainer.fit()
    raise_refusal(refusal_path(storage, f"ray-{name}"))
    info = _export(result, cfg, phase, run, out_dir)
    _copy(f"{logs['metrics']}/metrics.jsonl", f"{out_dir}/metrics.jsonl")
    final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return {**info, "final_metrics": final, "checkpoint": result.checkpoint.path}
