"""Training metrics: FLOPs per token, device peak, MFU, memory, and where they are logged
(``metrics.jsonl``, TensorBoard, W&B, console lines; object-store runs included).

MFU (model FLOPs utilisation, PaLM appendix B) counts the FLOPs the model needs, not the
ones the hardware executed (recomputation is not credited):

    flops_per_token = 6 * N  +  12 * L * H * Q * T

``N``: parameters that take part in matmuls (all but the input embedding lookup, which is
a gather; phi's untied LM head is counted); ``6 = 2`` (forward multiply-add) ``+ 4``
(backward, two matmuls). The second term is attention's score and value matmuls, forward
and backward: ``L`` layers, ``H`` heads, ``Q`` head dim, ``T`` sequence length.

Attention convention: the full ``T x T`` score matrix is counted, causal masking is *not*
discounted (PaLM appendix B, nanoGPT, and what the paper-comparable "~50% MFU" figures
use). FlashAttention's and torchtitan's causal convention counts half of it
(``6 L H Q T``); at phi-1's sizes (T 2048, hidden 2048) the attention term is ~12% of
the total, so the causal MFU is ~6% lower (3 points at 50%). ``flops_per_token(..., causal=True)`` gives it.
Then

    MFU = flops_per_token * tokens_per_second / (peak_flops_per_device * n_devices)

Peak: on GPUs a table of dense tensor-core peaks for the training dtype; on CPUs the
measured FLOP/s of a large fp32 matmul on this machine (there is no reliable spec sheet
for a shared, throttled CPU), so CPU MFU says how close the loop gets to the matmul roof.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from functools import lru_cache
from typing import Any

# Dense peak TFLOP/s per device (no sparsity) by dtype, from the vendors' data sheets.
# Matched by substring of torch.cuda.get_device_name(), first hit wins (order matters).
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0}),  # 1,671 with sparsity
    ("H100", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("H800", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("GH200", {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0}),
    ("B200", {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("A800", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6}),
    ("L40", {"bf16": 181.0, "fp16": 181.0, "fp32": 90.5}),  # before "L4", which it contains
    ("A10G", {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2}),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3}),
    ("V100", {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7}),
    ("T4", {"bf16": 0.0, "fp16": 65.0, "fp32": 8.1}),
]


def flops_per_token(
    n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int, causal: bool = False
) -> float:
    """Training FLOPs per token: ``6 N + 12 L H Q T`` (``6 L H Q T`` when ``causal``)."""
    attn = (6.0 if causal else 12.0) * n_layer * n_head * head_dim * seq_len
    return 6.0 * n_params + attn


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

        return table_peak(torch.cuda.get_device_name(torch.device(device)), dtype_name)
    return cpu_matmul_flops(), "measured:cpu-fp32-matmul"


def table_peak(name: str, dtype_name: str) -> tuple[float, str]:
    """(dense peak FLOP/s, source) of a GPU by its device name; 0 when not in the table."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if key in name and peaks.get(dtype_name):
            return peaks[dtype_name] * 1e12, f"table:{key}:{dtype_name}"
    return 0.0, f"unknown GPU {name!r}"


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

    def flush(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


class _Mirror:
    """A local directory whose files :meth:`push` copies to ``uri``.

    For a local ``uri`` the directory is ``uri`` itself and pushing does nothing. For an
    object store, rank 0 writes into a private temporary directory on its node (appends
    and TensorBoard's buffered writes need a real file) and the files are uploaded at each
    checkpoint and at the end; ``pull`` first brings down what an earlier attempt uploaded
    (a restarted worker group's rank 0 may be on another node).
    """

    def __init__(self, uri: str, pull: bool = False) -> None:
        self.remote = uri if "://" in uri else None
        if self.remote is None:
            self.local = uri
            os.makedirs(uri, exist_ok=True)
            return
        import pyarrow.fs as pafs

        self.fs, self.path = pafs.FileSystem.from_uri(uri)
        self.local = tempfile.mkdtemp(prefix="phi-ray-logs-")
        found = self.fs.get_file_info(self.path).type == pafs.FileType.Directory
        if pull and found:
            pafs.copy_files(
                self.path, self.local, self.fs, pafs.LocalFileSystem(), use_threads=False
            )

    def push(self) -> None:
        if self.remote is None:
            return
        import pyarrow.fs as pafs

        pafs.copy_files(self.local, self.path, pafs.LocalFileSystem(), self.fs)

    def close(self) -> None:
        self.push()
        if self.remote is not None:
            shutil.rmtree(self.local, ignore_errors=True)


def tensorboard_tag(key: str) -> str:
    """``val_loss`` -> ``val/loss``; every other metric -> ``train/<key>``."""
    return f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"


def progress_line(phase: str, rec: dict[str, Any], max_steps: int, eta_s: float) -> str:
    """One console line: step/max, loss, lr, tokens/s, MFU, ETA (and val loss when known)."""
    val = f" | val {rec['val_loss']:.4f}" if "val_loss" in rec else ""
    eta = time.strftime("%H:%M:%S", time.gmtime(max(eta_s, 0))) if math.isfinite(eta_s) else "?"
    days = f"{int(eta_s // 86400)}d " if math.isfinite(eta_s) and eta_s >= 86400 else ""
    return (
        f"[{phase}] step {rec['step']}/{max_steps} | loss {rec['loss']:.4f}{val} | "
        f"lr {rec['lr']:.2e} | {rec['tokens_per_s']:,.0f} tok/s | MFU {100 * rec['mfu']:.2f}% "
        f"| ETA {days}{eta}"
    )


class TrainLogger:
    """Rank 0's record of training: ``metrics.jsonl``, TensorBoard, W&B, console lines.

    ``spec`` (built by the stage on the driver): ``phase``; ``metrics`` and ``tensorboard``,
    directories in the run (local or object store; ``tensorboard`` may be None); ``wandb``,
    None or the keyword arguments of ``wandb.init``; ``lines``, whether to print a progress
    line every ``log_every`` steps (when the driver has no terminal for a progress bar).
    """

    def __init__(self, spec: dict[str, Any], start: int, max_steps: int, log_every: int):
        self.phase, self.max_steps, self.log_every = spec["phase"], max_steps, log_every
        self.start, self.t0 = start, time.perf_counter()
        self.lines = bool(spec.get("lines"))
        self.metrics_dir = _Mirror(spec["metrics"], pull=True)
        self.jsonl = MetricsLog(os.path.join(self.metrics_dir.local, "metrics.jsonl"), start)
        self.tb_dir = self.tb = None
        if spec.get("tensorboard"):
            from tensorboardX import SummaryWriter

            self.tb_dir = _Mirror(spec["tensorboard"])
            # purge_step: TensorBoard hides what a crashed attempt logged after the step it
            # resumes from. TensorBoard reads a directory's files in name order, and the name
            # has whole seconds: the suffix orders two attempts within one second.
            self.tb = SummaryWriter(
                self.tb_dir.local,
                purge_step=start + 1 if start else None,
                flush_secs=30,
                filename_suffix=f".{time.time_ns()}",
            )
        self.wandb = _wandb_init(spec.get("wandb"))

    def write(self, rec: dict[str, Any]) -> None:
        step = rec["step"]
        self.jsonl.write(rec)
        scalars = {
            k: float(v)
            for k, v in rec.items()
            if k != "step" and isinstance(v, int | float) and math.isfinite(v)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(tensorboard_tag(k), v, step)
        if self.wandb is not None:
            self.wandb.log({tensorboard_tag(k): v for k, v in scalars.items()}, step=step)
        if self.lines and (step % self.log_every == 0 or step == self.max_steps):
            per_step = (time.perf_counter() - self.t0) / max(step - self.start, 1)
            eta = per_step * (self.max_steps - step)
            # sys.stdout, not print(): Ray Train patches print() on workers (logged twice).
            sys.stdout.write(progress_line(self.phase, rec, self.max_steps, eta) + "\n")
            sys.stdout.flush()

    def sync(self) -> None:
        """Make everything written so far durable in the run directory (at checkpoints)."""
        self.jsonl.flush()
        if self.tb is not None:
            self.tb.flush()
            self.tb_dir.push()
        self.metrics_dir.push()

    def close(self) -> None:
        self.jsonl.close()
        self.metrics_dir.close()
        if self.tb is not None:
            self.tb.close()
            self.tb_dir.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_init(kwargs: dict[str, Any] | None) -> Any:
    """A W&B run when asked for and the package is installed; otherwise None (said once)."""
    if not kwargs:
        return None
    try:
        import wandb
    except ImportError:
        sys.stdout.write(f"W&B project {kwargs['project']!r} set, but wandb is not installed\n")
        return None
    return wandb.init(**kwargs)
