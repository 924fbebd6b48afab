"""The per-worker training loop that Ray Train's ``TorchTrainer`` runs on every worker.

One optimizer step = ``accum`` micro-batches per worker x ``num_workers`` workers =
``global_batch`` sequences, whatever the number of workers. AdamW (decay on matrices only),
linear warmup then linear decay to ``min_lr``, gradient clipping, bf16/fp16 autocast with a
grad scaler for fp16, DDP or FSDP2. Every step writes a metrics line; every
``checkpoint_every`` steps (and at the end) a checkpoint goes to Ray Train, from which a
restarted worker group, or a rerun of the stage, resumes exactly.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import torch

from phi_ray.config import ModelConfig, TrainConfig
from phi_ray.train import checkpoint as ckpt
from phi_ray.train.data import BatchPlan, TokenWindows, eval_indices, localize
from phi_ray.train.metrics import TrainLogger, memory_stats, model_flops_per_token, peak_flops


def lr_lambda(tc: TrainConfig):
    """Multiplier of ``tc.lr`` at a step: linear warmup, then linear decay to ``min_lr``."""

    def f(step: int) -> float:
        if step < tc.warmup_steps:
            return (step + 1) / tc.warmup_steps
        span = max(tc.max_steps - tc.warmup_steps, 1)
        frac = min((step - tc.warmup_steps) / span, 1.0)
        return (tc.min_lr + (1.0 - frac) * (tc.lr - tc.min_lr)) / tc.lr

    return f


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, device: torch.device):
    """AdamW; weight decay on weight matrices only (not biases, LayerNorms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": tc.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=tc.lr,
        betas=tuple(tc.adam_betas),
        eps=tc.adam_eps,
        fused=device.type == "cuda",
    )


def wrap_model(
    model: torch.nn.Module,
    strategy: str,
    device: torch.device,
    world: int,
    dtype: torch.dtype = torch.float32,
):
    """DDP (replicated) or FSDP2 (``fully_shard`` per decoder layer, then the root).

    FSDP2 all-gathers parameters in the compute dtype and reduce-scatters gradients in fp32
    (``MixedPrecisionPolicy``): half the all-gather bytes and no fp32 layer copy per GPU.
    DDP's gradients are views into its all-reduce buckets (``gradient_as_bucket_view``):
    without it every gradient exists twice, once in ``.grad`` and once in its bucket.
    """
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        return fully_shard(model, mp_policy=mp)
    if world == 1:
        return model  # nothing to synchronise; skips DDP's bucket copies
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids, gradient_as_bucket_view=True)


def _sync_context(model: torch.nn.Module, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if hasattr(model, "no_sync") and not sync:
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def _loss(model, w: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Mean next-token loss of windows ``w`` (B, T+1), fused: no (B, T, V) logits exist."""
    x, y = w[:, :-1], w[:, 1:]  # (B, T) inputs and next-token targets
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return model(input_ids=x, labels=y)  # PhiForTraining: the loss, from hidden states


def _all_mean(t: torch.Tensor, world: int) -> float:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
        t = t / world
    return float(t)


@torch.no_grad()
def evaluate(model, val: TokenWindows, tc: TrainConfig, rank, world, dtype, device) -> float:
    """Mean next-token loss on a fixed set of validation windows (all ranks together)."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, batches)
    for idx in eval_indices(len(val), rank, world, tc.micro_batch, tc.eval_batches):
        w = torch.from_numpy(val.take(idx)).to(device)
        total += torch.stack([_loss(model, w, dtype, device).double(), total.new_ones(())])
    model.train()
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


def _maybe_fault(fault: dict | None, step: int, rank: int, world: int) -> None:
    """Injected crash for tests of recovery: once (a marker file), on the last rank."""
    if not fault or step != fault["step"] or rank != world - 1:
        return
    if os.path.exists(fault["marker"]):
        return
    open(fault["marker"], "w").close()
    if fault.get("mode") == "raise":
        raise RuntimeError(f"injected fault at step {step}")
    os._exit(1)  # a hard crash, as a lost node or OOM kill


def write_refusal(path: str, msg: str) -> None:
    """The refusal where the driver reads it after ``fit()`` (local or object store): Ray
    Train hands the driver only metrics reported with a checkpoint, and a checkpoint here
    would be resumed from."""
    from phi_ray.runs import resolve_fs

    fs, p = resolve_fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as f:
        f.write(msg.encode())


def plan_refusal(config: dict, mcfg: ModelConfig, tc: TrainConfig, world: int, device) -> str:
    """Why this step cannot fit this worker's device ('' when it fits), the same on all ranks.

    The device is the CUDA one the worker found, or on CPU the plan table entry that
    ``config["device_gpu"]`` names (tests of this path). Every rank takes the first refusal
    of any rank, so all of them report it and return together (a report is a collective).
    """
    from phi_ray.plan import GPUS, PlanError, check_device, check_fits

    phase = (config.get("logs") or {}).get("phase", "pretrain")
    seq = int(config["seq_len"])
    msg = ""
    try:
        if device.type == "cuda":
            check_device(mcfg, tc, seq, world, device, phase)
        elif config.get("device_gpu"):
            check_fits(mcfg, tc, seq, world, GPUS[config["device_gpu"]], phase)
    except PlanError as e:
        msg = str(e)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":  # NCCL's object collectives use the current device
            torch.cuda.set_device(device)
        msgs: list[Any] = [None] * world
        dist.all_gather_object(msgs, msg)
        msg = next((m for m in msgs if m), "")
    return msg


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker entry point; ``config`` is built by :mod:`phi_ray.train.stage`."""
    import ray.train
    import ray.train.torch

    from phi_ray.model.phi import build_train_model, prepare_layers
    from phi_ray.runtime import pick_dtype

    tc, mcfg = TrainConfig(**config["train"]), ModelConfig(**config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu" and config.get("threads"):
        torch.set_num_threads(config["threads"])
    dtype = pick_dtype(tc.precision, str(device))
    seed = config["seed"]
    refusal = plan_refusal(config, mcfg, tc, world, device)
    if refusal:  # returned, not raised: Ray Train would retry a raise max_failures times
        if rank == 0 and config.get("refusal_path"):
            write_refusal(config["refusal_path"], refusal)
        return
    model = build_train_model(mcfg, str(device), seed).to(device)  # same init on every rank
    torch.manual_seed(seed + 1 + rank)  # then dropout masks differ per rank
    resume = ray.train.get_checkpoint()
    if config.get("init_from") and resume is None:
        model.load_state_dict(ckpt.load_hf_weights(localize(config["init_from"])))
    compile_on = tc.compile == "on" or (tc.compile == "auto" and device.type == "cuda")
    prepare_layers(model, tc.activation_checkpointing, compile_on)
    model = wrap_model(model, tc.strategy, device, world, dtype)
    optim = make_optimizer(model, tc, device)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(tc))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    state: dict[str, Any] = {"step": 0, "best_val": math.inf, "best_step": -1}
    best = None
    if resume is not None:
        with resume.as_directory() as d:
            state, best = ckpt.load(d, rank, model, optim)
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if rank == 0:  # to the driver's console by Ray's log forwarding (Train's patched
            # print() would log it twice)
            sys.stdout.write(
                f"resuming at step {state['step']} of {tc.max_steps}, from its checkpoint\n"
            )
            sys.stdout.flush()

    train = TokenWindows(config["train_path"])
    val = TokenWindows(config["val_path"]) if config.get("val_path") else None
    plan = BatchPlan(len(train), seed, tc.global_batch, world, tc.micro_batch)
    loop = _Loop(config, tc, model, optim, sched, scaler, dtype, device, rank, world)
    loop.run(state, best, train, val, plan)


class _Loop:
    """The step loop, with its metrics, evaluation and checkpoint plumbing."""

    def __init__(self, config, tc, model, optim, sched, scaler, dtype, device, rank, world):
        self.config, self.tc, self.model, self.optim = config, tc, model, optim
        self.sched, self.scaler, self.dtype, self.device = sched, scaler, dtype, device
        self.rank, self.world = rank, world
        self._cuda = device.type == "cuda"
        seq_len = int(config["seq_len"])
        self.tokens_per_step = tc.global_batch * seq_len
        self.flops_per_token = model_flops_per_token(model, seq_len)
        dname = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        self.peak, self.peak_source = peak_flops(str(device), dname)

    def step(self, step: int, train: TokenWindows, plan: BatchPlan) -> tuple[float, float]:
        """One optimizer step over ``plan.accum`` micro-batches; returns (loss, grad norm)."""
        loss_sum = torch.zeros((), device=self.device)
        for m in range(plan.accum):
            w = torch.from_numpy(train.take(plan.indices(step, self.rank, m)))
            w = w.pin_memory().to(self.device, non_blocking=True) if self._cuda else w
            with _sync_context(self.model, m == plan.accum - 1):
                loss = _loss(self.model, w, self.dtype, self.device)
                self.scaler.scale(loss / plan.accum).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optim)
        clip = self.tc.grad_clip if self.tc.grad_clip > 0 else math.inf
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if hasattr(gnorm, "full_tensor"):  # FSDP2 DTensor
            gnorm = gnorm.full_tensor()
        self.scaler.step(self.optim)
        self.scaler.update()
        self.optim.zero_grad(set_to_none=True)
        self.sched.step()
        return _all_mean(loss_sum / plan.accum, self.world), float(gnorm)

    def run(self, state, best, train, val, plan) -> None:
        import ray.train

        tc, rank = self.tc, self.rank
        start = state["step"]
        logs = self.config.get("logs")
        log = TrainLogger(logs, start, tc.max_steps, tc.log_every) if rank == 0 and logs else None
        bar = _progress(self.config, start, tc.max_steps) if rank == 0 else None
        began = time.perf_counter()
        for step in range(start, tc.max_steps):
            _maybe_fault(self.config.get("fault"), step, rank, self.world)
            lr = self.sched.get_last_lr()[0]
            t0 = time.perf_counter()
            loss, gnorm = self.step(step, train, plan)
            dt = time.perf_counter() - t0
            # since this attempt's first step: with the bookkeeping between steps (metrics,
            # reports, evaluation, checkpoints), which step_time_s leaves out
            elapsed = time.perf_counter() - began
            done = step + 1
            tps = self.tokens_per_step / dt
            rec = {
                "step": done,
                "loss": loss,
                "lr": lr,
                "grad_norm": gnorm,
                "tokens_per_s": tps,
                "mfu": self.flops_per_token * tps / (self.peak * self.world) if self.peak else 0.0,
                "step_time_s": dt,
                "elapsed_s": elapsed,
                "epoch": plan.epoch(done),
                "tokens": done * self.tokens_per_step,
                **memory_stats(str(self.device)),
            }
            last = done == tc.max_steps
            if val is not None and len(val) and (done % tc.eval_every == 0 or last):
                rec["val_loss"] = evaluate(
                    self.model, val, tc, rank, self.world, self.dtype, self.device
                )
                if rec["val_loss"] < state["best_val"]:
                    state.update(best_val=rec["val_loss"], best_step=done)
                    if tc.keep_best:
                        best = ckpt.full_model_state(self.model)
            if log:
                log.write(rec)
            if bar:
                bar.update(1)
                bar.set_description(f"step {done} loss {loss:.3f}")
            if done % tc.checkpoint_every == 0 or last:
                state["step"] = done
                if log:  # before the checkpoint: a resume from it finds every line up to it
                    log.sync()
                self._checkpoint(rec, state, best)
            elif done % tc.log_every == 0:
                ray.train.report(rec)
        if log:
            log.close()
        if bar:
            bar.close()

    def _checkpoint(self, rec: dict, state: dict, best) -> None:
        import ray.train

        state = {
            **state,
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "world_size": self.world,
        }
        with tempfile.TemporaryDirectory() as d:
            ckpt.save(d, self.rank, self.model, self.optim, state, best if self.rank == 0 else None)
            ray.train.report(
                {**rec, "best_val_loss": state["best_val"], "best_step": state["best_step"]},
                checkpoint=ray.train.Checkpoint.from_directory(d),
                checkpoint_dir_name=f"step-{state['step']:08d}",
            )


def _progress(config: dict, start: int, total: int):
    """A progress bar that renders on the driver (Ray's tqdm), when asked for."""
    if not config.get("progress"):
        return None
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=total, desc="train")
    bar.update(start)
    return bar
