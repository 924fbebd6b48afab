"""Per-GPU memory of the training step, term by term, from the model and batch shapes.

Bytes per GPU, for one worker (rank) of ``W = gpus_per_node x nodes``:

- **parameters** fp32 ``4P`` (DDP) or ``4P / W`` (FSDP2 shards them);
- **gradients** fp32 ``4P`` / ``4P / W``; DDP's are views into its all-reduce buckets
  (``gradient_as_bucket_view``), so there is no second copy;
- **optimizer** AdamW's two fp32 moments, ``8P`` / ``8P / W``;
- **weight copies**: under autocast (DDP) every layer weight is cast to bf16/fp16 once per
  forward and each matmul keeps its copy for backward: ``2 P_layers``. FSDP2 with
  ``MixedPrecisionPolicy`` gathers bf16 weights instead, freed after each layer;
- **activations** what autograd keeps between forward and backward, per token and layer,
  counted from the ops of the eager step (:func:`layer_saved_bytes`; checked against
  :mod:`phi_ray.plan.measure` on CPU by ``tests/plan``), plus the embedding output, the
  final LayerNorm input and the loss's hidden-state gradient;
- **loss** the fused cross-entropy's head gradient (fp32 ``V x H``, kept from forward to
  backward) and its transient chunk of logits (see :mod:`phi_ray.model.loss`);
- **communication** DDP: two 25 MiB buckets in flight; FSDP: two gathered layers (current
  and prefetched) in the compute dtype, their fp32 gradients before reduce-scatter, and
  the root's embedding and head, gathered for the whole step;
- **recompute**: with activation checkpointing, one layer's full activations during its
  backward.

The figures model the eager step; ``torch.compile`` fuses elementwise chains and usually
saves less, so with compile on they are an upper bound. Not counted (in the reserve):
the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from phi_ray.config import ModelConfig, TrainConfig
from phi_ray.model.loss import chunk_tokens

GIB = 2**30


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float  # what torch.cuda.get_device_properties().total_memory reports
    bf16_tflops: float  # dense tensor-core peak (no sparsity)
    per_node: int  # GPUs per node of the instance type the cluster uses


# memory as torch reports it (the marketing "40GB" is 40 GiB minus ECC/driver reservations)
GPUS: dict[str, Gpu] = {
    "a100-40gb": Gpu("A100-SXM4-40GB", 39.4, 312.0, 8),  # p4d.24xlarge
    "a100-80gb": Gpu("A100-SXM4-80GB", 79.1, 312.0, 8),  # p4de.24xlarge
    "h100-80gb": Gpu("H100 80GB HBM3", 79.1, 989.0, 8),  # p5.48xlarge
    "h200-141gb": Gpu("H200", 139.8, 989.0, 8),  # p5e.48xlarge
}
RESERVE_GIB = 1.5  # CUDA context, cuBLAS and NCCL workspaces
FRAGMENTATION = 0.05  # allocator slack, as a fraction of the device
DDP_BUCKET_BYTES = 2 * 25 * 2**20


def gpu_for_device_name(name: str, total_bytes: int) -> Gpu:
    """A :class:`Gpu` for a device torch found (its real memory, the closest table peak)."""
    peak = next((g.bf16_tflops for g in GPUS.values() if g.name.split()[0] in name), 0.0)
    return Gpu(name, total_bytes / GIB, peak, 8)


def usable_bytes(gpu: Gpu) -> float:
    return (gpu.memory_gib * (1 - FRAGMENTATION) - RESERVE_GIB) * GIB


def layer_saved_bytes(m: ModelConfig, act_bytes: int, checkpointing: str) -> float:
    """Bytes per token that one decoder layer keeps for backward.

    ``act_bytes``: 2 under bf16/fp16 autocast, 4 in fp32. The residual stream (layer input)
    stays fp32. Without checkpointing: the input (for LayerNorm) and its stats; the
    LayerNorm output as the four projections' inputs (one shared fp32 tensor, or four casts
    under autocast); q and k after rotary, v, the attention output and its re-laid-out copy
    for ``dense``, the log-sum-exp; fc1's output (GELU's input) and GELU's output (fc2's
    input). ``gelu_new`` adds three fp32 intermediates of its formula. Residual dropout keeps
    two byte masks. Selective keeps the input, all six projections' outputs and the
    attention output; full keeps the input only.
    """
    h, f, a = m.hidden_size, m.intermediate_size, act_bytes
    lse = 4 * m.n_head
    if checkpointing == "full":
        return 4 * h
    if checkpointing == "selective":
        return 4 * h + 5 * a * h + a * h + lse + a * f
    ln_out = 4 * a * h if a < 4 else 4 * h
    attn = 5 * a * h + lse
    mlp = 2 * a * f + (3 * 4 * f if m.activation == "gelu_new" else 0)
    dropout = 2 * h if m.resid_dropout > 0 else 0
    return 4 * h + 8 + ln_out + attn + mlp + dropout


@dataclass
class Plan:
    """One configuration's per-GPU memory (bytes) and what it means for the step."""

    strategy: str
    checkpointing: str
    micro_batch: int
    world: int
    terms: dict[str, float] = field(default_factory=dict)
    usable: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.usable


def plan_memory(
    m: ModelConfig,
    seq_len: int,
    micro_batch: int,
    gpu: Gpu,
    world: int,
    strategy: str = "ddp",
    checkpointing: str = "none",
    act_bytes: int = 2,
) -> Plan:
    """Per-GPU memory of one configuration (see the module docstring for each term)."""
    h, v, L = m.hidden_size, m.vocab_size, m.n_layer
    layer_params = 4 * (h * h + h) + 2 * h * m.intermediate_size + h + m.intermediate_size + 2 * h
    n_params = L * layer_params + 2 * v * h + v + 2 * h  # embedding, head (+bias), final LN
    n_tok = micro_batch * seq_len
    shard = world if strategy == "fsdp" else 1
    per_layer = layer_saved_bytes(m, act_bytes, checkpointing)
    # + the final LayerNorm's input and stats, and the loss's dL/dh (fp32); the embedding
    # output is the first layer's input, already in per_layer
    acts = n_tok * (L * per_layer + 4 * h + 8 + 4 * h)
    chunk = chunk_tokens(n_tok, v)
    # one chunk of logits (+ its compute-dtype copies) and, under autocast, the head's
    # gradient product before it is added to the fp32 buffer
    half = act_bytes < 4
    loss_transient = chunk * v * (4 + (2 * act_bytes if half else 0)) + (
        v * h * act_bytes if half else 0
    )
    t = {
        "parameters": 4.0 * n_params / shard,
        "gradients": 4.0 * n_params / shard,
        "optimizer": 8.0 * n_params / shard,
        "weight copies": float(act_bytes * L * layer_params)
        if strategy == "ddp" and act_bytes < 4
        else 0.0,
        "activations": float(acts),
        "loss": 4.0 * (v * h + v) + (act_bytes * v * h if act_bytes < 4 else 0) + loss_transient,
        "communication": 0.0,
        "recompute": 0.0,
    }
    if strategy == "ddp":
        t["communication"] = DDP_BUCKET_BYTES if world > 1 else 0.0
    else:
        t["communication"] = 2 * layer_params * (act_bytes + 4) + 2 * v * h * act_bytes
    if checkpointing != "none":
        t["recompute"] = n_tok * layer_saved_bytes(m, act_bytes, "none")
    return Plan(strategy, checkpointing, micro_batch, world, t, usable_bytes(gpu))


def largest_micro_batch(m, seq_len, gpu, world, strategy, checkpointing, act_bytes=2, cap=256):
    """The largest micro-batch (1..cap) whose plan fits, or 0 when not even 1 does."""
    best = 0
    for mb in range(1, cap + 1):
        if not plan_memory(m, seq_len, mb, gpu, world, strategy, checkpointing, act_bytes).fits:
            break
        best = mb
    return best


def accumulation(tc: TrainConfig, micro_batch: int, world: int) -> int | None:
    """Micro-batches per step to reach ``global_batch``; None when it does not divide."""
    per = micro_batch * world
    return tc.global_batch // per if per and tc.global_batch % per == 0 else None
