"""Rank 0's training record: metrics.jsonl, TensorBoard event files that TensorBoard itself
reads back, resume without duplicate steps, one console line every ``log_every`` steps; and
Ray Data's progress without a terminal as one line per operator."""

from __future__ import annotations

import json
import logging
import math
import re
import time

import pytest

from phi_ray.train.metrics import TrainLogger, progress_line


def _rec(step: int, **extra) -> dict:
    return {
        "step": step,
        "loss": 11.0 - 0.1 * step,
        "lr": 1e-3 * step,
        "grad_norm": 1.0,
        "tokens_per_s": 1000.0 + step,
        "mfu": 0.05,
        "step_time_s": 0.1,
        "epoch": 0.01 * step,
        "tokens": 128 * step,
        "mem_rss_gib": 0.5,
        **extra,
    }


def _spec(tmp_path, lines: bool = True) -> dict:
    return {
        "phase": "pretrain",
        "metrics": str(tmp_path / "logs"),
        "tensorboard": str(tmp_path / "tb"),
        "wandb": None,
        "lines": lines,
    }


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_has_every_metric_per_step(tmp_path, capsys):
    log = TrainLogger(_spec(tmp_path), start=0, max_steps=25, log_every=10)
    for s in range(1, 26):
        log.write(_rec(s, **({"val_loss": 9.0} if s % 10 == 0 else {})))
    log.close()
    sc = _scalars(str(tmp_path / "tb"))
    for tag in ("train/loss", "train/lr", "train/tokens_per_s", "train/mfu", "train/grad_norm"):
        assert [s for s, _ in sc[tag]] == list(range(1, 26)), tag
    assert sc["train/loss"][0][1] == pytest.approx(10.9)
    assert sc["val/loss"] == [(10, 9.0), (20, 9.0)]
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 26))


def test_one_console_line_every_log_every_steps_and_at_the_end(tmp_path, capsys):
    log = TrainLogger(_spec(tmp_path), start=0, max_steps=25, log_every=10)
    for s in range(1, 26):
        log.write(_rec(s))
    log.close()
    out = capsys.readouterr().out.splitlines()
    assert [re.search(r"step (\d+)/25", x).group(1) for x in out] == ["10", "20", "25"]
    for part in ("loss 10.0000", "lr 1.00e-02", "1,010 tok/s", "MFU 5.00%", "ETA "):
        assert part in out[0], (part, out[0])
    assert out[-1].endswith("ETA 00:00:00")


def test_no_console_lines_when_the_driver_has_a_terminal(tmp_path, capsys):
    log = TrainLogger(_spec(tmp_path, lines=False), start=0, max_steps=20, log_every=10)
    for s in range(1, 21):
        log.write(_rec(s))
    log.close()
    assert capsys.readouterr().out == ""


def test_resume_drops_what_the_crashed_attempt_logged_past_its_checkpoint(tmp_path):
    first = TrainLogger(_spec(tmp_path), start=0, max_steps=20, log_every=100)
    for s in range(1, 16):  # checkpoint at 10, crash after 15
        first.write(_rec(s))
        if s == 10:
            first.sync()
    first.tb.flush()  # what a crash leaves on disk: no close()
    second = TrainLogger(_spec(tmp_path), start=10, max_steps=20, log_every=100)
    for s in range(11, 21):
        second.write(_rec(s, loss=1.0))
    second.close()
    steps = [json.loads(x)["step"] for x in open(tmp_path / "logs" / "metrics.jsonl")]
    assert steps == list(range(1, 21))
    loss = _scalars(str(tmp_path / "tb"))["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 21))  # steps 11-15 once, from the rerun
    assert all(v == 1.0 for s, v in loss if s > 10)


def test_progress_line_eta_spans_days():
    line = progress_line("finetune", _rec(5), 36_000, eta_s=2 * 86400 + 3661)
    assert "[finetune] step 5/36000" in line and line.endswith("ETA 2d 01:01:01")
    assert progress_line("pretrain", _rec(1), 2, math.inf).endswith("ETA ?")


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "ray.data._internal.progress.logging_progress":
            self.lines.append(f"{record.funcName}|{record.getMessage()}")


def test_ray_data_progress_without_a_tty_is_one_line_per_operator(ray_session, monkeypatch):
    """Real Ray Data progress reports (stdout is not a TTY under pytest), after init_ray."""
    import ray
    from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

    from phi_ray.runtime import init_ray

    monkeypatch.setattr(LoggingExecutionProgressManager, "LOG_REPORT_INTERVAL_SEC", 1)
    init_ray()  # Ray is already up: only the progress filter is installed

    def slow(batch):  # defined here: Ray pickles it by value, not as this test module's
        time.sleep(0.2)
        return batch

    keep = _Keep()
    data_log = logging.getLogger("ray.data")
    data_log.addHandler(keep)
    try:
        ds = ray.data.range(64, override_num_blocks=8).map_batches(slow, batch_size=8)
        assert ds.map(lambda r: {"y": r["id"] + 1}).count() == 64
    finally:
        data_log.removeHandler(keep)
    progress = keep.lines
    assert progress  # reports were made (1 s interval, several seconds of work)
    for line in progress:
        assert re.fullmatch(r"_log_op_or_sub_progress\|\[dataset_\w+\] \S.*: \d+/(\d+|\?)", line), (
            line
        )
    ops = {line.split("] ", 1)[1].rsplit(":", 1)[0] for line in progress}
    assert 2 <= len(ops) <= 3, ops  # ReadRange, MapBatches(...)->Map(...), the count


def test_a_wandb_project_without_the_package_is_said_once_and_training_logs_on(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    spec = {**_spec(tmp_path, lines=False), "wandb": {"project": "phi-ray-test"}}
    log = TrainLogger(spec, start=0, max_steps=3, log_every=1)
    for s in range(1, 4):
        log.write(_rec(s))
    log.close()
    assert capsys.readouterr().out == "W&B project 'phi-ray-test' set, but wandb is not installed\n"
    assert len((tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()) == 3
