"""Process-level helpers shared by stages: Ray start-up, devices and precision."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("phi_ray")


def init_ray(cfg: Any | None = None, **kwargs: Any) -> None:
    """Connect to the cluster in ``run.ray_address`` / ``RAY_ADDRESS``, else start a local one.

    Idempotent: a process that already has Ray initialised keeps it (tests start one per
    session). Local clusters log at WARNING and keep the dashboard on 127.0.0.1: Ray
    Train's placement-group cleaner asks the State API (served by the dashboard) whether its
    controller lives, every second, and logs a warning each time the answer is missing.
    """
    import ray

    quiet_data_progress()
    if ray.is_initialized():
        return
    address = (cfg.run.ray_address if cfg is not None else None) or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True, **kwargs)
        return
    num_cpus = cfg.run.num_cpus if cfg is not None else None
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        configure_logging=True,
        logging_level=logging.WARNING,
        **kwargs,
    )


class _DataProgressLines(logging.Filter):
    """Ray Data's progress without a terminal as one line per operator per report.

    With no TTY (``ray job submit``, a RayJob, a pipe), Ray Data logs a block every 10 s
    (``RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL``): a banner, the total, the cluster's
    resources, a blank line, then two lines per operator and a closing rule. This keeps
    each operator's ``name: done/total`` line, prefixed with its dataset, and drops the
    rest. Records it does not recognise pass unchanged, so a Ray that words its report
    differently is only louder, never silent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dataset = ""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.funcName == "refresh":  # banner, blank line, closing rule
            if "Running Dataset:" in msg:
                self.dataset = msg.split("Running Dataset:", 1)[1].strip(" =")
            return False
        if record.funcName == "_log_global_progress":  # total and resources
            return False
        if record.funcName == "_log_op_or_sub_progress":
            if msg.startswith("  ") and not msg.startswith("    - "):
                return False  # the operator's task/queue/resource summary
            record.msg, record.args = f"[{self.dataset}] {msg.strip()}", ()
        return True


def quiet_data_progress() -> None:
    """Install :class:`_DataProgressLines` on Ray Data's progress logger (idempotent)."""
    logger = logging.getLogger("ray.data._internal.progress.logging_progress")
    if not any(isinstance(f, _DataProgressLines) for f in logger.filters):
        logger.addFilter(_DataProgressLines())


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False


def flash_attn_available() -> bool:
    if not cuda_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def pick_dtype(precision: str, device: str) -> Any:
    """torch dtype for a precision name; ``auto`` is bf16 on GPUs that have it, else fp32.

    fp16/bf16 on CPU fall back to fp32: the CPU path is for correctness, not speed.
    """
    import torch

    if device == "cpu" or not device.startswith("cuda"):
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
