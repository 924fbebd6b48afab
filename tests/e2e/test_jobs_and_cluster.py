"""`ray job submit` against a real local head, and cluster.yaml through Ray's own validation."""

from __future__ import annotations

import copy
import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import RAY

REPO = Path(__file__).resolve().parents[2]


def test_cluster_yaml_validates_with_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    gpu = types["gpu_a100"]
    assert gpu["node_config"]["InstanceType"] == "p4d.24xlarge" and gpu["min_workers"] == 0
    assert types["cpu_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    image = cfg["docker"]["image"]
    assert image.startswith("rayproject/ray:") and image.endswith("-gpu") and ":latest" not in image
    assert any("phi-ray" in c for c in cfg["setup_commands"])


def test_k8s_manifests_are_kuberay_resources():
    docs = {}
    for p in sorted((REPO / "k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(p.read_text()):
            docs[d["kind"]] = d
    assert {"RayCluster", "RayJob", "RayService"} <= set(docs)
    for d in docs.values():
        assert d["apiVersion"].startswith("ray.io/")
    assert "jobs/pipeline.py" in docs["RayJob"]["spec"]["entrypoint"]
    assert "serve/app.py" in json.dumps(docs["RayService"]["spec"]) or "serve.app" in json.dumps(
        docs["RayService"]["spec"]
    )


# step/max | loss | lr | tokens/s | MFU | ETA: what a job without a TTY prints every log_every
PROGRESS = re.compile(
    r"\[pretrain\] step (\d+)/6 \| loss \d+\.\d{4} .*\| lr \d\.\d\de[+-]\d+ \| "
    r"[\d,]+ tok/s \| MFU \d+\.\d\d% \| ETA (\d\d:\d\d:\d\d|\?)"
)


def _submit(head, job_id: str, entrypoint: list[str]) -> None:
    """`ray job submit` of this checkout, as a user runs it; asserts the job succeeded."""
    cmd = [RAY, "job", "submit", "--address", head.dashboard, "--submission-id", job_id]
    cmd += ["--working-dir", str(REPO), "--runtime-env-json"]
    cmd += [json.dumps({"excludes": [".venv", "runs", ".git", "*.egg-info"]}), "--"]
    # The head's job agent comes up a few seconds after `ray start` returns (longer on a busy
    # machine): retry only that answer, for a bounded time.
    for _ in range(20):
        r = subprocess.run(
            cmd + entrypoint, capture_output=True, text=True, timeout=400, env=head.env
        )
        if r.returncode == 0 or "No available agent" not in r.stdout + r.stderr:
            break
        time.sleep(3)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = subprocess.run(
        [RAY, "job", "status", "--address", head.dashboard, job_id],
        capture_output=True,
        text=True,
        timeout=60,
        env=head.env,
    )
    # `ray job status` prints the JobStatus (SUCCEEDED) as "Job '<id>' succeeded"
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, (
        status.stdout + status.stderr
    )


def test_ray_job_submit_runs_pipeline(local_head, tmp_path):
    runs = tmp_path / "runs"
    t0 = time.time()
    pipeline = [sys.executable, "jobs/pipeline.py", "--preset", "tiny", "--run", "job"]
    pipeline += ["--runs-dir", str(runs), "--to", "ingest"]
    pipeline += ["--set", "corpus.sources=[{kind: stdlib, max_files: 40}]"]
    _submit(local_head, f"phi-ray-test-{secrets.token_hex(4)}", pipeline)
    # the job really ran the stage on that cluster and committed its output
    success = json.loads((runs / "job" / "ingest" / "_SUCCESS.json").read_text())
    assert success["counts"], success
    assert time.time() - t0 < 400


# slow: its own head and a Ray Train start, 73 s + 25 s for the head at load 15, where the
# ingest job above took 63 s (19 s idle): roughly 30 s idle, over the default suite's budget
@pytest.mark.slow
def test_ray_job_submit_pretrain_prints_progress_lines(local_head, tmp_path, tokenizer):
    """A tiny pretrain job (on windows as pack writes them; no TTY) shows its per-step
    progress lines in `ray job logs`."""
    from train_fixtures import TINY, train_cfg, write_pack

    from phi_ray.runs import RunDir

    runs = tmp_path / "runs"
    write_pack(RunDir.from_config(train_cfg(runs, "train")), tokenizer)
    sets = [*TINY, "pretrain.max_steps=6", "pretrain.log_every=2", "pretrain.eval_every=6"]
    sets += ["pretrain.global_batch=8", "pretrain.micro_batch=8", "pretrain.eval_batches=1"]
    pretrain = [sys.executable, "jobs/pretrain.py", "--preset", "tiny", "--run", "train"]
    pretrain += ["--runs-dir", str(runs), *(x for kv in sets for x in ("--set", kv))]
    job_id = f"phi-ray-pretrain-{secrets.token_hex(4)}"
    _submit(local_head, job_id, pretrain)
    logs = subprocess.run(
        [RAY, "job", "logs", "--address", local_head.dashboard, job_id],
        capture_output=True,
        text=True,
        timeout=60,
        env=local_head.env,
    )
    assert logs.returncode == 0, logs.stderr[-2000:]
    steps = [int(m.group(1)) for m in PROGRESS.finditer(logs.stdout)]
    assert steps == [2, 4, 6], logs.stdout[-4000:]
    assert (runs / "train" / "pretrain" / "_SUCCESS.json").exists()
