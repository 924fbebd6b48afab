"""`ray job submit` against a real local head, and cluster.yaml through Ray's own validation."""

from __future__ import annotations

import copy
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

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


def test_ray_job_submit_runs_pipeline(local_head, tmp_path):
    address, env = local_head.dashboard, local_head.env
    runs = tmp_path / "runs"
    job_id = f"phi-ray-test-{secrets.token_hex(4)}"
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        job_id,
        "--working-dir",
        str(REPO),
        "--runtime-env-json",
        json.dumps({"excludes": [".venv", "runs", ".git", "*.egg-info"]}),
        "--",
        sys.executable,
        "jobs/pipeline.py",
        "--preset",
        "tiny",
        "--run",
        "job",
        "--runs-dir",
        str(runs),
        "--to",
        "ingest",
        "--set",
        "corpus.sources=[{kind: stdlib, max_files: 40}]",
    ]
    t0 = time.time()
    # The head's job agent comes up a few seconds after `ray start` returns (longer on a busy
    # machine): retry only that answer, for a bounded time.
    for _ in range(20):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
        if r.returncode == 0 or "No available agent" not in r.stdout + r.stderr:
            break
        time.sleep(3)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    status = subprocess.run(
        [RAY, "job", "status", "--address", address, job_id],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    # `ray job status` prints the JobStatus (SUCCEEDED) as "Job '<id>' succeeded"
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, (
        status.stdout + status.stderr
    )
    # the job really ran the stage on that cluster and committed its output
    ingest = runs / "job" / "ingest"
    if (REPO / "phi_ray" / "corpus" / "stage.py").exists():
        success = json.loads((ingest / "_SUCCESS.json").read_text())
        assert success["counts"], success
    assert time.time() - t0 < 400
