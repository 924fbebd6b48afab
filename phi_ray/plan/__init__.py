"""``phi-ray plan``: will a preset's training step fit its GPUs, and how long will it take?

For a phase (pretrain or finetune) of a preset on a GPU type and node count: per-GPU memory
term by term (:mod:`phi_ray.plan.memory`) for DDP and FSDP, with and without activation
checkpointing; the largest micro-batch that fits each; the accumulation that reaches the
global batch; the step time and total hours at a stated MFU.

A step that cannot fit is refused twice over, naming the setting that would fit: on the
driver before the trainer starts (:func:`check_before_start`, against ``train.gpu`` or the
accelerator types of the cluster's nodes), and in each worker against the device it finds
(:func:`check_device`). A worker's refusal is reported, not raised: Ray Train retries every
worker error up to ``max_failures``, and a plan that does not fit fails the same way each time.
"""

from __future__ import annotations

from dataclasses import dataclass

from phi_ray.config import Config, ModelConfig, TrainConfig
from phi_ray.plan.memory import (
    GIB,
    GPUS,
    Gpu,
    Plan,
    accumulation,
    gpu_for_device_name,
    largest_micro_batch,
    layer_saved_bytes,
    plan_memory,
)

__all__ = [
    "GPUS",
    "Gpu",
    "Plan",
    "PlanError",
    "check_before_start",
    "check_device",
    "check_fits",
    "cluster_gpus",
    "largest_micro_batch",
    "layer_saved_bytes",
    "plan_memory",
    "render",
    "step_seconds",
]

MODES = [(s, c) for s in ("ddp", "fsdp") for c in ("none", "selective", "full")]


class PlanError(ValueError):
    """A training configuration that cannot fit the device it would run on."""


def step_seconds(
    m: ModelConfig,
    tc: TrainConfig,
    seq_len: int,
    gpu: Gpu,
    world: int,
    mfu: float,
    checkpointing: str = "none",
) -> float:
    """Seconds per optimizer step at ``mfu`` (model FLOPs, see train/metrics.py), with the
    recomputed forward of full checkpointing on top (selective recomputes elementwise ops
    only, counted as free)."""
    from phi_ray.train.metrics import flops_per_token

    h, L, hd = m.hidden_size, m.n_layer, m.hidden_size // m.n_head
    layer = 4 * h * h + 2 * h * m.intermediate_size
    n = L * layer + m.vocab_size * h  # matmul weights: layers + untied head
    fpt = flops_per_token(n, L, m.n_head, hd, seq_len)
    if checkpointing == "full":
        fpt += 2 * L * layer + 4 * L * m.n_head * hd * seq_len  # one more layer forward
    return fpt * tc.global_batch * seq_len / (gpu.bf16_tflops * 1e12 * world * mfu)


@dataclass
class Row:
    strategy: str
    checkpointing: str
    plan: Plan  # at the configured micro-batch
    largest: int
    step_s: float


def rows(cfg: Config, phase: str, gpu: Gpu, nodes: int, mfu: float) -> list[Row]:
    tc: TrainConfig = getattr(cfg, phase)
    world = gpu.per_node * nodes
    out = []
    for strategy, ck in MODES:
        p = plan_memory(cfg.model, cfg.pack.seq_len, tc.micro_batch, gpu, world, strategy, ck)
        big = largest_micro_batch(cfg.model, cfg.pack.seq_len, gpu, world, strategy, ck)
        out.append(
            Row(
                strategy,
                ck,
                p,
                big,
                step_seconds(cfg.model, tc, cfg.pack.seq_len, gpu, world, mfu, ck),
            )
        )
    return out


def render(cfg: Config, phase: str, gpu_key: str, nodes: int, mfu: float) -> str:
    """The text ``phi-ray plan`` prints for one phase."""
    gpu = GPUS[gpu_key]
    tc: TrainConfig = getattr(cfg, phase)
    world = gpu.per_node * nodes
    seq = cfg.pack.seq_len
    all_rows = rows(cfg, phase, gpu, nodes, mfu)
    lines = [
        f"{phase}: {cfg.run.name}, {cfg.model.n_layer} layers x {cfg.model.hidden_size}, "
        f"seq {seq}, global batch {tc.global_batch}, micro-batch {tc.micro_batch}, "
        f"{world} x {gpu.name} ({gpu.memory_gib:.1f} GiB, {gpu_key}), {nodes} node(s); "
        f"configured: {tc.strategy}, checkpointing {tc.activation_checkpointing}",
        f"GiB per GPU at micro-batch {tc.micro_batch} (bf16 autocast; usable "
        f"{all_rows[0].plan.usable / GIB:.1f} GiB after reserve):",
    ]
    keys = list(all_rows[0].plan.terms)
    head = f"  {'strategy':8} {'ckpt':9} " + " ".join(f"{k[:11]:>11}" for k in keys)
    lines.append(head + f" {'total':>7} {'fits':>4} {'max mb':>6} {'accum':>5} {'step s':>7}")
    for r in all_rows:
        acc = accumulation(tc, tc.micro_batch, world)
        mark = (
            "*"
            if (r.strategy, r.checkpointing) == (tc.strategy, tc.activation_checkpointing)
            else " "
        )
        cells = " ".join(f"{r.plan.terms[k] / GIB:11.2f}" for k in keys)
        lines.append(
            f"{mark} {r.strategy:8} {r.checkpointing:9} {cells} {r.plan.total / GIB:7.2f} "
            f"{'yes' if r.plan.fits else 'NO':>4} {r.largest:6d} {acc if acc else '-':>5} "
            f"{r.step_s:7.2f}"
        )
    mine = next(
        r
        for r in all_rows
        if r.plan.strategy == tc.strategy and r.plan.checkpointing == tc.activation_checkpointing
    )
    hours = mine.step_s * tc.max_steps / 3600
    lines.append(
        f"configured ({tc.strategy}, {tc.activation_checkpointing}): "
        f"{'FITS' if mine.plan.fits else 'DOES NOT FIT'} "
        f"({mine.plan.total / GIB:.1f} of {mine.plan.usable / GIB:.1f} GiB); "
        f"{accumulation(tc, tc.micro_batch, world) or '-'} micro-batches per step; "
        f"{mine.step_s:.2f} s/step at MFU {mfu:.0%} -> {hours:.1f} h for {tc.max_steps} steps "
        f"({hours * world:.0f} GPU-hours)"
    )
    return "\n".join(lines)


# Ray's accelerator_type resources -> the plan's table entries. Ray detects "A100" without
# its size; a node type may also declare the sized label (cluster.yaml's p4d nodes do).
RAY_ACCELERATORS: dict[str, tuple[str, ...]] = {
    "A100-40G": ("a100-40gb",),
    "A100-80G": ("a100-80gb",),
    "A100": ("a100-40gb", "a100-80gb"),
    "H100": ("h100-80gb",),
    "H200": ("h200-141gb",),
}


def cluster_gpus(resources: dict[str, float]) -> list[str]:
    """Plan table keys of the GPU types among a cluster's resources (``ray.cluster_resources()``
    keys ``accelerator_type:<type>``); a sized A100 label replaces the unsized one."""
    types = {k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")}
    if types & {"A100-40G", "A100-80G"}:
        types.discard("A100")
    return sorted({g for t in types for g in RAY_ACCELERATORS.get(t, ())})


def check_before_start(
    cfg: Config, phase: str, resources: dict[str, float] | None = None
) -> Plan | None:
    """On the driver, before a GPU trainer starts: :func:`check_fits` on ``train.gpu``, or on
    the GPU types of the cluster's live nodes (``resources``; default Ray's). With several
    candidates (an unsized A100, mixed node types) only a step that fits none is refused;
    each worker still checks the device it gets. None when there is nothing to check: a CPU
    run, or no GPU node up yet (a cluster scaling from zero).
    """
    tc: TrainConfig = getattr(cfg, phase)
    if not tc.use_gpu:
        return None
    if tc.gpu != "auto":
        keys = [tc.gpu]
    else:
        if resources is None:
            import ray

            if not ray.is_initialized():
                return None
            resources = ray.cluster_resources()
        keys = cluster_gpus(resources)
    if not keys:
        return None
    largest_last = sorted(keys, key=lambda k: GPUS[k].memory_gib)
    for key in largest_last[:-1]:
        try:
            return check_fits(cfg.model, tc, cfg.pack.seq_len, tc.num_workers, GPUS[key], phase)
        except PlanError:
            continue
    gpu = GPUS[largest_last[-1]]
    return check_fits(cfg.model, tc, cfg.pack.seq_len, tc.num_workers, gpu, phase)


def check_device(
    m: ModelConfig, tc: TrainConfig, seq_len: int, world: int, device, phase: str = "pretrain"
) -> Plan:
    """:func:`check_fits` for the CUDA device this worker found (its name and real memory)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    return check_fits(
        m, tc, seq_len, world, gpu_for_device_name(props.name, props.total_memory), phase
    )


def check_fits(
    m: ModelConfig, tc: TrainConfig, seq_len: int, world: int, gpu: Gpu, phase: str = "pretrain"
) -> Plan:
    """The step's plan on ``gpu``; :class:`PlanError` naming the settings that would fit."""
    act = 4 if tc.precision == "fp32" else 2
    p = plan_memory(
        m, seq_len, tc.micro_batch, gpu, world, tc.strategy, tc.activation_checkpointing, act
    )
    if p.fits:
        return p
    fixes = []
    for strategy, ck in MODES:
        big = largest_micro_batch(m, seq_len, gpu, world, strategy, ck, act)
        if big == 0:
            continue
        sets = [f"{phase}.micro_batch={_divisor(tc.global_batch // world, big)}"]
        if strategy != tc.strategy:
            sets.append(f"{phase}.strategy={strategy}")
        if ck != tc.activation_checkpointing:
            sets.append(f"{phase}.activation_checkpointing={ck}")
        fixes.append((len(sets), -big, " ".join(f"--set {s}" for s in sets)))
    fixes = [f for *_, f in sorted(fixes)]  # fewest changed settings first
    terms = ", ".join(f"{k} {v / GIB:.1f}" for k, v in p.terms.items() if v)
    raise PlanError(
        f"{phase}: micro_batch {tc.micro_batch} ({tc.strategy}, checkpointing "
        f"{tc.activation_checkpointing}) needs {p.total / GIB:.1f} GiB per GPU ({terms}) but "
        f"{gpu.name} has {p.usable / GIB:.1f} GiB usable; fix: "
        + ("; or ".join(fixes[:3]) if fixes else "more GPUs (FSDP) or a smaller model")
        + " (see `phi-ray plan`)"
    )


def _divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` not above ``at_most`` (so global_batch stays reachable)."""
    return max(d for d in range(1, max(at_most, 1) + 1) if n % d == 0)
