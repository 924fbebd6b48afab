"""Ray Train workers run at the normal CPU priority, not Ray's worker nice 15."""

from __future__ import annotations

import os

from train_fixtures import train_cfg

from phi_ray.runs import RunDir
from phi_ray.train.stage import WORKER_RUNTIME_ENV, loop_config, make_trainer


def test_training_workers_are_not_niced(ray_session, tmp_path):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Probe:
        def nice(self) -> int:
            return os.nice(0)

    # what Ray does to a worker process, and what the trainer's worker env undoes
    assert ray.get(Probe.remote().nice.remote()) == 15
    assert ray.get(Probe.options(runtime_env=WORKER_RUNTIME_ENV).remote().nice.remote()) == 0
    cfg = train_cfg(tmp_path, "nice")
    run = RunDir.from_config(cfg)
    trainer = make_trainer(
        cfg, run, "pretrain", str(tmp_path), "ray-x", loop_config(cfg, run, "pretrain", None, None)
    )
    assert trainer.run_config.worker_runtime_env["env_vars"] == WORKER_RUNTIME_ENV["env_vars"]
