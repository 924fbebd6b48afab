"""Training metrics: FLOPs per token, device peak, MFU, memory and the ``metrics.jsonl`` log.

MFU (model FLOPs utilisation, PaLM appendix B) counts the FLOPs the model needs, not the
ones the hardware executed (recomputation is not credited):

    flops_per_token = 6 * N  +  12 * L * H * Q * T

``N``: parameters that take part in matmuls (all but the input embedding lookup, which is
a gather; phi's untied LM head is counted); ``6 = 2`` (forward multiply-add) ``+ 4``
(backward, two matmuls). The second term is attention's score and value matmuls, forward
and backward: ``L`` layers, ``H`` heads, ``Q`` head dim, ``T`` sequence length (causal
masking is not discounted, as in PaLM and nanoGPT). Then

    MFU = flops_per_token * tokens_per_second / (peak_flops_per_device * n_devices)

Peak: on GPUs a table of dense tensor-core peaks for the training dtype; on CPUs the
measured FLOP/s of a large fp32 matmul on this machine (there is no reliable spec sheet
for a shared, throttled CPU), so CPU MFU says how close the loop gets to the matmul roof.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from typing import Any

# Dense peak TFLOP/s per device (no sparsity) by dtype, from the vendors' data sheets.
# Matched by substring of torch.cuda.get_device_name(), first hit wins (order matters).
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H800", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("GH200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("V100", {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7}),
    ("T4", {"bf16": 0.0, "fp16": 65.0, "fp32": 8.1}),
]


def flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> float:
    """Training FLOPs per token: ``6 N + 12 L H Q T`` (see the module docstring)."""
    return 6.0 * n_params + 12.0 * n_layer * n_head * head_dim * seq_len


def model_flops_per_token(model: Any, seq_len: int) -> float:
    """:func:`flops_per_token` for a PhiForCausalLM (or a DDP/FSDP wrapper of one)."""
    m = getattr(model, "module", model)
    cfg = m.config
    n = sum(p.numel() for p in m.parameters()) - m.get_input_embeddings().weight.numel()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return flops_per_token(n, cfg.num_hidden_layers, cfg.num_attention_heads, head_dim, seq_len)


@lru_cache(maxsize=1)
def cpu_matmul_flops(n: int = 1024, seconds: float = 1.0) -> float:
    """Measured fp32 matmul FLOP/s of this process's CPU threads (best of repeated runs)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up the BLAS thread pool
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2.0 * n**3 / (time.perf_counter() - t))
    return best


def peak_flops(device: str, dtype_name: str) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    if device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name(torch.device(device))
        for key, peaks in GPU_PEAK_TFLOPS:
            if key in name and peaks.get(dtype_name):
                return peaks[dtype_name] * 1e12, f"table:{key}:{dtype_name}"
        return 0.0, f"unknown GPU {name!r}"
    return cpu_matmul_flops(), "measured:cpu-fp32-matmul"


def memory_stats(device: str) -> dict[str, float]:
    """Peak accelerator memory (GiB) on GPUs; the process's resident memory on CPUs."""
    if device.startswith("cuda"):
        import torch

        return {
            "mem_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
            "mem_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        }
    import psutil

    return {"mem_rss_gib": psutil.Process().memory_info().rss / 2**30}


class MetricsLog:
    """Appends one JSON object per step to ``metrics.jsonl``, durably.

    On resume from step ``s`` the lines after ``s`` (written by the crashed attempt past its
    last checkpoint) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, path: str, resume_step: int) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        kept = []
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line torn by the crash
                    if rec.get("step", 0) <= resume_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
        self.f = open(path, "a", buffering=1)

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec, sort_keys=True) + "\n")

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
