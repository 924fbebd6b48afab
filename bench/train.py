"""Training throughput: the new step against the old one, Ray Train against a plain loop, MFU.

    python bench/train.py --step             # the step comparison only (CPU, ~5-10 min)
    python bench/train.py                    # CPU, tiny model, ~1-2 min, then the above
    python bench/train.py --steps 30 --hidden 256 --layers 4
    python bench/train.py --gpu              # on a GPU node: MFU of phi1-small and phi1

In one run, with the same model, batch, data and thread count:

1. a plain single-process PyTorch loop running the worker's own step (the same model, fused
   loss, AdamW, accumulation, clipping; no Ray) -> tokens/s, before and after (2), with Ray
   already started for both;
2. ``phi-ray pretrain`` (Ray Train TorchTrainer, one worker) -> tokens/s from its
   ``metrics.jsonl`` (per-step time measured inside the worker, as the plain loop's), twice:
   with the worker at Ray's own nice 15 and as phi-ray starts it (nice 0, see
   ``phi_ray/train/stage.py``), each followed by another plain loop;
3. ratio (2)/(1) (target >= 0.95) and the CPU's MFU against its measured fp32 matmul FLOP/s
   (formula in ``phi_ray/train/metrics.py``).

The step comparison (``step_bench``), in one process on a phi1-shaped model cut to 2 layers
at sequence 2048 (hidden 2048, MLP 8192, 32 heads, vocab 51,200; micro-batch 1, dropout 0
so that both see the same function): the step as it was (transformers' ``gelu_new``, full
logits and ``F.cross_entropy`` on their fp32 copy) against the new one (``gelu_pytorch_tanh``
and the chunked linear cross-entropy of phi_ray/model/loss.py, compile as configured):
tokens/s (target >= 1.3x), memory kept for backward and peak activation memory (target
<= 0.6x; CPU: counted by phi_ray/plan/measure.py, CUDA: max_memory_allocated), and both
losses, which must agree. Runs alternate (old, new, old, new, ...) so that load drifts on a
shared machine hit both alike; medians are reported.

With ``--gpu`` it also measures the plain loop's MFU for phi1-small and phi1 (as many layers
as fit) at bf16 with flash-attn where installed, against the GPU's table peak (target 50%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "train"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def plain_loop(
    cfg, windows, steps: int, device: str = "cpu", dtype=torch.float32, same_step: bool = True
) -> list[float]:
    """A plain PyTorch loop over the same batches; returns per-step seconds.

    ``same_step``: the model and loss the Ray Train worker runs (PhiForTraining and its
    fused cross-entropy, layers prepared as configured), so that Ray against plain compares
    the harness alone; else transformers' model with full logits (the GPU MFU figures).
    """
    from phi_ray.model.phi import build_model, build_train_model, prepare_layers
    from phi_ray.train.data import BatchPlan
    from phi_ray.train.loop import _loss, lr_lambda, make_optimizer

    tc = cfg.pretrain
    dev = torch.device(device)
    if same_step:
        model = build_train_model(cfg.model, device, cfg.run.seed).to(device)
        compile_on = tc.compile == "on" or (tc.compile == "auto" and dev.type == "cuda")
        prepare_layers(model, tc.activation_checkpointing, compile_on)
    else:
        model = build_model(cfg.model, device, cfg.run.seed).to(device)
    optim = make_optimizer(model, tc, dev)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(tc))
    plan = BatchPlan(len(windows), cfg.run.seed, tc.global_batch, 1, tc.micro_batch)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        for m in range(plan.accum):
            w = torch.from_numpy(windows.take(plan.indices(step, 0, m))).to(device)
            if same_step:
                (_loss(model, w, dtype, dev) / plan.accum).backward()
                continue
            with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
                logits = model(input_ids=w[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten())
            (loss / plan.accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optim.step()
        optim.zero_grad(set_to_none=True)
        sched.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def cpu_bench(args) -> None:
    from train_fixtures import train_cfg, write_pack

    from phi_ray.model.phi import build_model
    from phi_ray.model.tokenizer import get_tokenizer
    from phi_ray.runs import RunDir
    from phi_ray.runtime import init_ray
    from phi_ray.train import stage
    from phi_ray.train.data import TokenWindows
    from phi_ray.train.metrics import cpu_matmul_flops, model_flops_per_token
    from phi_ray.train.stage import pretrain

    root = tempfile.mkdtemp(prefix="phi-ray-bench-")

    def bench_cfg(name: str):
        return train_cfg(
            root,
            name,
            f"model.hidden_size={args.hidden}",
            f"model.intermediate_size={4 * args.hidden}",
            f"model.n_layer={args.layers}",
            f"pack.seq_len={args.seq}",
            f"model.max_position_embeddings={max(args.seq, 128)}",
            f"pretrain.max_steps={args.steps}",
            f"pretrain.global_batch={args.global_batch}",
            f"pretrain.micro_batch={args.micro}",
            f"pretrain.checkpoint_every={args.steps}",
            f"pretrain.eval_every={args.steps}",
            "pretrain.eval_batches=1",
            f"pretrain.cpus_per_worker={args.threads}",
            "pretrain.progress=false",
            f"run.num_cpus={args.threads}",
        )

    cfg = bench_cfg("bench")
    run = RunDir.from_config(cfg)
    write_pack(run, get_tokenizer(), seq_len=args.seq, n_files=60)
    windows = TokenWindows(run.path("pack", "pretrain", "train"))
    torch.set_num_threads(args.threads)
    warm = 2

    # plain, Ray as Ray starts workers (nice 15), plain, Ray as phi-ray starts them (nice 0),
    # plain: load that drifts on a shared machine hits every arm alike. Ray is started
    # before the first plain loop, so its idle daemons run under all of them.
    arms = {"ray-nice15": {}, "ray": stage.WORKER_RUNTIME_ENV}
    ray_times: dict[str, list[float]] = {}
    ray_wall: dict[str, float] = {}
    init_ray(cfg)
    plain = plain_loop(cfg, windows, args.steps)[warm:]
    print(f"plain loop done: median step {statistics.median(plain):.3f} s", flush=True)
    try:
        for arm, env in arms.items():
            acfg = bench_cfg(arm)  # its own run: the stage would skip a finished one
            arun = RunDir.from_config(acfg)
            write_pack(arun, get_tokenizer(), seq_len=args.seq, n_files=60)
            stage.WORKER_RUNTIME_ENV = env
            res = pretrain(acfg, arun)
            with open(os.path.join(res.path, "metrics.jsonl")) as f:
                recs = [json.loads(line) for line in f]
            ray_times[arm] = [r["step_time_s"] for r in recs][warm:]
            # steps warm+1 .. N-1 end to end, bookkeeping included (not the last step's
            # evaluation and checkpoint, nor the plain loop's: it has none)
            ray_wall[arm] = (recs[-2]["elapsed_s"] - recs[warm]["elapsed_s"]) / (
                len(recs) - 2 - warm
            )
            med = statistics.median(ray_times[arm])
            print(f"{arm} done: median step {med:.3f} s", flush=True)
            plain += plain_loop(cfg, windows, args.steps)[warm:]
            print(f"plain loop done: median step {statistics.median(plain):.3f} s", flush=True)
    finally:
        stage.WORKER_RUNTIME_ENV = arms["ray"]
        shutil.rmtree(root, ignore_errors=True)

    tokens = args.global_batch * args.seq
    tps_plain = tokens / statistics.median(plain)
    fpt = model_flops_per_token(build_model(cfg.model), args.seq)
    peak = cpu_matmul_flops()
    print(
        f"model: {args.layers} layers, hidden {args.hidden}, seq {args.seq}, "
        f"batch {args.global_batch} (micro {args.micro}), {args.threads} threads, {args.steps} "
        f"steps ({warm} warm-up steps dropped per loop); load now {os.getloadavg()[0]:.1f}"
    )
    print(
        f"plain PyTorch loop (3 runs)     : {tps_plain:8.0f} tokens/s  "
        f"(median step {statistics.median(plain):.3f} s)"
    )
    what = {"ray-nice15": "Ray Train, Ray's nice 15", "ray": "Ray Train, worker at nice 0"}
    for arm, times in ray_times.items():
        tps = tokens / statistics.median(times)
        print(
            f"{what[arm]:32}: {tps:8.0f} tokens/s  (median step {statistics.median(times):.3f} "
            f"s); ratio to plain {tps / tps_plain:.3f}"
            + ("  (target >= 0.95)" if arm == "ray" else "")
        )
        print(
            f"{'':32}  end to end (reports, logging): {ray_wall[arm]:.3f} s/step, ratio to "
            f"plain {statistics.mean(plain) / ray_wall[arm]:.3f} (plain's mean step)"
        )
    tps_ray = tokens / statistics.median(ray_times["ray"])
    print(
        f"CPU peak (measured fp32 matmul): {peak / 1e9:.1f} GFLOP/s; flops/token {fpt / 1e6:.1f} M"
    )
    print(f"MFU plain {fpt * tps_plain / peak:.1%}, Ray Train {fpt * tps_ray / peak:.1%}")


def gpu_bench(args) -> None:
    from phi_ray.config import load_config
    from phi_ray.model.phi import build_model
    from phi_ray.train.metrics import model_flops_per_token, peak_flops

    class _Windows:  # random token windows: throughput does not depend on the text
        def __init__(self, n, seq):
            self.a = np.random.default_rng(0).integers(0, 50000, (n, seq + 1))

        def __len__(self):
            return len(self.a)

        def take(self, idx):
            return self.a[idx]

    for preset in ("phi1-small", "phi1"):
        for layers in (None, 16, 12, 8):
            over = [
                "pretrain.global_batch=" + str(args.gpu_micro * 2),
                f"pretrain.micro_batch={args.gpu_micro}",
                "pretrain.num_workers=1",
            ]
            if layers:
                over.append(f"model.n_layer={layers}")
            cfg = load_config(preset, over)
            try:
                times = plain_loop(
                    cfg, _Windows(256, cfg.pack.seq_len), 8, "cuda", torch.bfloat16, False
                )
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                continue
            tps = cfg.pretrain.global_batch * cfg.pack.seq_len / statistics.median(times[2:])
            fpt = model_flops_per_token(build_model(cfg.model), cfg.pack.seq_len)
            peak, src = peak_flops("cuda:0", "bf16")
            print(
                f"{preset} ({cfg.model.n_layer} layers): {tps:.0f} tokens/s, "
                f"MFU {fpt * tps / peak:.1%} vs {src} (target 50%)"
            )
            break


def _step_models(seq: int, layers: int, device: str):
    """(old model, new model) with identical weights, phi1-shaped."""
    from phi_ray.config import ModelConfig
    from phi_ray.model.phi import build_model, build_train_model

    shape = dict(
        n_layer=layers, max_position_embeddings=seq, attention_dropout=0.0, resid_dropout=0.0
    )
    old = build_model(ModelConfig(**shape, activation="gelu_new"), device, seed=0)
    new = build_train_model(ModelConfig(**shape), device, seed=0)
    new.load_state_dict(old.state_dict())
    return old.to(device).train(), new.to(device).train()


def _old_loss(model, w):
    logits = model(input_ids=w[:, :-1]).logits  # (B, T, V), as the old _loss
    return F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten())


def _new_loss(model, w):
    return model(input_ids=w[:, :-1], labels=w[:, 1:])


def _one_step(model, optim, loss_fn, w, device, dtype):
    """One timed optimizer step; returns (seconds, loss, memory dict)."""
    from phi_ray.plan.measure import LiveBytes

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    ctx = LiveBytes() if not cuda else None
    with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
        if ctx:
            with ctx:
                loss = loss_fn(model, w)
                saved = ctx.live
                loss.backward()
        else:
            loss = loss_fn(model, w)
            saved = torch.cuda.memory_allocated() - base
            loss.backward()
    peak = ctx.peak if ctx else torch.cuda.max_memory_allocated() - base
    optim.step()
    optim.zero_grad(set_to_none=False)  # the buffers stay: what a step allocates is activations
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return dt, float(loss.detach()), {"saved": saved, "peak": peak}


def step_bench(args) -> dict:
    """New step vs old on a phi1-shaped 2-layer model; prints and returns the ratios."""
    from phi_ray.model.phi import prepare_layers

    device = "cuda" if args.gpu and torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.set_num_threads(args.threads)
    old, new = _step_models(args.step_seq, args.step_layers, device)
    prepare_layers(new, "none", compile=args.compile or device == "cuda")
    for p in (*old.parameters(), *new.parameters()):  # gradient buffers exist before the
        p.grad = torch.zeros_like(p)  # measured steps, as in accumulation: not counted
    # SGD: the optimizer is not what is compared, and AdamW's state would double the memory
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in (("old", old), ("new", new))}
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 50295, (args.step_micro, args.step_seq + 1), generator=g).to(device)
    res: dict[str, list] = {"old": [], "new": []}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    warm = 1 if args.step_warmup else 0
    for i in range(args.step_reps + warm):  # a first round warms up (and compiles)
        for name, model, fn in (("old", old, _old_loss), ("new", new, _new_loss)):
            out = _one_step(model, opts[name], fn, w, device, dtype)
            if i >= warm:
                res[name].append(out)
            print(f"  {name} step {i}: {out[0]:.2f} s, loss {out[1]:.5f}", flush=True)
    med = {k: statistics.median(r[0] for r in v) for k, v in res.items()}
    tokens = args.step_micro * args.step_seq
    # each model takes its own optimizer steps, from the same weights on the same batch, so
    # the losses must agree step for step within float rounding
    mem = {k: res[k][-1][2] for k in res}
    print(
        f"step: phi1-shaped, {args.step_layers} layers, seq {args.step_seq}, micro-batch "
        f"{args.step_micro}, {device}, {args.threads} threads, load {load:.1f} at start "
        f"(now {os.getloadavg()[0]:.1f})"
    )
    print(
        f"old (gelu_new, full fp32 logits): {tokens / med['old']:9.0f} tokens/s  "
        f"median {med['old']:.2f} s"
    )
    print(
        f"new (fused step)                : {tokens / med['new']:9.0f} tokens/s  "
        f"median {med['new']:.2f} s"
    )
    print(f"tokens/s ratio new/old: {med['old'] / med['new']:.2f}x  (target >= 1.3x)")
    for key, what in (
        ("saved", "kept for backward (after forward)"),
        ("peak", "peak activation memory (fwd+bwd)"),
    ):
        a, b = mem["old"][key], mem["new"][key]
        print(
            f"{what:38}: old {a / 2**30:6.2f} GiB, new {b / 2**30:6.2f} GiB, "
            f"ratio {b / a:.2f}  (target <= 0.6)"
        )
    losses = [(o[1], n[1]) for o, n in zip(res["old"], res["new"], strict=True)]
    worst = max(abs(o - n) / abs(o) for o, n in losses)
    print(
        f"losses old/new per step: {', '.join(f'{o:.5f}/{n:.5f}' for o, n in losses)} "
        f"(max rel diff {worst:.1e})"
    )
    return {"speedup": med["old"] / med["new"], "mem": mem, "loss_rel_diff": worst}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    p.add_argument("--gpu", action="store_true", help="also measure GPU MFU (needs CUDA)")
    p.add_argument("--gpu-micro", type=int, default=4)
    p.add_argument("--step", action="store_true", help="only the new-vs-old step comparison")
    p.add_argument("--ray", action="store_true", help="only Ray Train against the plain loop")
    p.add_argument("--step-layers", type=int, default=2)
    p.add_argument("--step-seq", type=int, default=2048)
    p.add_argument("--step-micro", type=int, default=1)
    p.add_argument("--step-reps", type=int, default=3)
    p.add_argument("--step-warmup", type=int, default=1, help="0: no warm-up round (CPU)")
    p.add_argument("--compile", action="store_true", help="compile the new step on CPU too")
    args = p.parse_args()
    if args.step:
        step_bench(args)
        return
    cpu_bench(args)
    if args.ray:
        return
    step_bench(args)
    if args.gpu or torch.cuda.is_available():
        gpu_bench(args)


if __name__ == "__main__":
    main()
