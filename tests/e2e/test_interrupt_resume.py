"""Ctrl-C in the middle of a stage: `phi-ray run` prints the resume command, and it resumes.

The stage interrupted is pretrain, the hard case: Ray Train installs its own SIGINT handler
inside ``fit()``, which would otherwise end the process without a word on how to resume.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from train_fixtures import TINY, write_pack

from phi_ray.config import load_config
from phi_ray.runs import RunDir

PHI_RAY = str(Path(sys.executable).parent / "phi-ray")
STEPS, EVERY = 30, 10


def _wait_for_a_recorded_checkpoint(work: Path, deadline: float) -> None:
    """Until Ray Train's snapshot lists a checkpoint: a step dir it has not recorded yet is
    not resumed from (the snapshot, not the directory listing, is what a rerun loads)."""
    while time.time() < deadline:
        for snap in work.glob("ray-*/checkpoint_manager_snapshot.json"):
            with contextlib.suppress(OSError):
                if "step-" in snap.read_text():
                    return
        time.sleep(0.5)
    raise AssertionError(f"no recorded checkpoint under {work}")


def test_ctrl_c_mid_pretrain_prints_a_resume_command_that_resumes(local_head, tmp_path, tokenizer):
    runs = tmp_path / "runs"
    sets = [*TINY, f"pretrain.max_steps={STEPS}", f"pretrain.checkpoint_every={EVERY}"]
    run = RunDir.from_config(load_config("tiny", [f"run.root={runs}", "run.name=r", *sets]))
    write_pack(run, tokenizer)
    cmd = [PHI_RAY, "run", "--preset", "tiny", "--run", "r", "--runs-dir", str(runs)]
    cmd += ["--from", "pretrain", "--to", "pretrain"]
    cmd += [a for s in sets for a in ("--set", s)]
    # RAY_ADDRESS: the driver joins the test's own head, as `phi-ray run` joins a cluster.
    env = {**local_head.env, "RAY_ADDRESS": local_head.address, "PYTHONUNBUFFERED": "1"}
    # Its own process group, signalled as a terminal's Ctrl-C signals the foreground group.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _wait_for_a_recorded_checkpoint(Path(run.work_path("pretrain")), time.time() + 300)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-3000:]
    assert not run.is_complete("pretrain")
    lines = out.splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("[pretrain] interrupted"))
    assert "checkpoints are kept in" in lines[marker] and "resume with:" in lines[marker]
    resume = shlex.split(lines[marker + 1])
    assert resume[:2] == ["phi-ray", "run"] and resume[resume.index("--from") + 1] == "pretrain"

    # The printed command, as printed, picks the run up from Ray Train's latest checkpoint.
    again = subprocess.run(
        [PHI_RAY, *resume[1:]], capture_output=True, text=True, env=env, timeout=400
    )
    out2 = again.stdout + again.stderr
    assert again.returncode == 0, out2[-3000:]
    assert out2.count("resuming at step ") == 1, out2[-3000:]
    found = re.search(r"resuming at step (\d+) of ", out2)
    assert found, out2[-3000:]
    resumed_at = int(found.group(1))
    assert EVERY <= resumed_at < STEPS
    assert run.is_complete("pretrain")
    assert run.read_success("pretrain")["counts"]["steps"] == STEPS
    # and the metrics log reads as one run: every step once, in order
    steps = [
        json.loads(line)["step"]
        for line in Path(run.path("pretrain", "metrics.jsonl")).read_text().splitlines()
    ]
    assert steps == list(range(1, STEPS + 1))
