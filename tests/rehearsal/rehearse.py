"""The cluster rehearsal (``make rehearse``): the tiny pipeline on a 3-node Ray cluster with
its run directory on an S3-compatible store, a worker node killed mid-pretrain, a rerun.

On this one machine, with real processes only:

1. an S3 endpoint (moto's server mode) and a bucket;
2. a Ray cluster as ``ray start`` makes one: a head with no CPUs (it runs the driver and
   Ray's own services, as a cluster's head does) and two worker nodes of one CPU each, each
   with its own node-local cache directory (its "disk"); token auth on, as Ray 2.60 has it;
3. ``phi-ray run --runs-dir s3://...`` through the report, with pretrain and finetune on two
   Ray Train workers, which can only be placed one per worker node;
4. mid-pretrain (after its first checkpoint) one worker node is SIGKILLed, as a lost spot
   instance, and a new one joins, as the autoscaler would start; Ray Train restarts the
   worker group from the checkpoint in the bucket and the run finishes;
5. the same command again: every stage is skipped;
6. ``phi-ray serve --model s3://...`` from the run's exported model (each replica loads its
   node's copy), a completion through the real ``openai`` client, a ``/v1/quality`` score
   from the run's classifier in the bucket, then Ctrl-C (SIGINT) shuts it down.

Exit status 0 only when every check passed; each check prints one ``ok``/``FAIL`` line.
Usage: ``python tests/rehearsal/rehearse.py [--to STAGE] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: the S3 server helper

from s3_server import S3Server, free_port  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")
RUN = "rehearsal"
BUCKET = "phi"
# Small enough for CI on 2 cores; large enough that pretrain has a checkpoint to lose work after.
OVERRIDES = [
    "corpus.sources=[{kind: stdlib, max_files: 150}]",
    "annotate.sample_size=80",
    "synth.n_exercises=40",
    "synth.n_textbooks=4",
    "pack.seq_len=64",
    "model.hidden_size=64",
    "model.intermediate_size=256",
    "model.rotary_dim=8",
    "model.max_position_embeddings=128",
    "pretrain.num_workers=2",
    "pretrain.max_steps=24",
    "pretrain.checkpoint_every=8",
    "pretrain.eval_every=8",
    "pretrain.eval_batches=1",
    "pretrain.log_every=2",
    "pretrain.warmup_steps=2",
    "pretrain.max_failures=3",
    "finetune.num_workers=2",
    "finetune.max_steps=6",
    "finetune.checkpoint_every=3",
    "finetune.eval_every=3",
    "finetune.eval_batches=1",
    "finetune.log_every=2",
    "evaluate.limit=3",
    "evaluate.max_new_tokens=16",
]
KILL_AFTER = "[pretrain] step 10/"  # past the step-8 checkpoint


class Cluster:
    """A head and worker nodes, each ``ray start`` in its own process group."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.port = free_port()
        self.nodes: dict[str, subprocess.Popen] = {}

    def _ports(self) -> list[str]:
        flags = (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "node-manager-port",
            "object-manager-port",
        )
        return [f"--{f}={free_port()}" for f in flags]

    def _start(self, name: str, args: list[str], cache: Path | None = None) -> None:
        env = dict(self.env)
        if cache is not None:  # this node's "local disk" for token and model copies
            env["PHI_RAY_NODE_CACHE"] = str(cache)
        cmd = [RAY, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args]
        proc = subprocess.Popen(
            cmd + self._ports(),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {name} failed:\n{out.decode()[-3000:]}")
        self.nodes[name] = proc

    def start_head(self) -> None:
        self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                "--num-cpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.tmp / 'ray'}",
            ],
            self.tmp / "cache-head",  # CPU-less replicas (Serve's ingress) may copy here
        )

    def add_worker(self, name: str) -> None:
        cache = self.tmp / f"cache-{name}"
        self._start(name, [f"--address=127.0.0.1:{self.port}", "--num-cpus=1"], cache)

    def kill(self, name: str) -> None:
        """SIGKILL every process of one node (a lost instance: no clean shutdown)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.nodes.pop(name).pid, signal.SIGKILL)

    def stop(self) -> None:
        for name in list(self.nodes)[::-1]:
            proc = self.nodes.pop(name)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                time.sleep(1)


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> bool:
        print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failed.append(what)
        return ok


def run_pipeline(cmd: list[str], env: dict[str, str], on_line=None, timeout: float = 3600):
    """Run the driver, echo and collect its output; ``on_line`` sees each line."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(f"  | {line}")
            if on_line:
                on_line(line)
        proc.wait()
    finally:
        timer.cancel()
    return proc.returncode, "".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--to", default="report", help="last stage (default: report)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    check = Checks()
    t_start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))  # short: Ray's socket paths
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    s3 = S3Server(tmp / "moto.log")
    s3.create_bucket(BUCKET)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PHI_RAY_NODE_CACHE")}
    env.update(s3.env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.update(RAY_TRAIN_V2_ENABLED="1", TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0")
    cluster = Cluster(tmp, env)
    try:
        cluster.start_head()
        cluster.add_worker("w1")
        cluster.add_worker("w2")
        print(f"cluster up: head + 2 workers at 127.0.0.1:{cluster.port}; S3 at {s3.endpoint}")
        driver_env = dict(env, RAY_ADDRESS=f"127.0.0.1:{cluster.port}")
        root = f"s3://{BUCKET}/runs"
        cmd = [sys.executable, "-m", "phi_ray.cli", "run", "--preset", "tiny", "--run", RUN]
        cmd += ["--runs-dir", root, "--to", args.to, *(f"--set={o}" for o in OVERRIDES)]

        killed: list[float] = []

        def kill_mid_pretrain(line: str) -> None:
            if not killed and KILL_AFTER in line:
                killed.append(time.time())
                print("  >> killing worker node w2 (SIGKILL) mid-pretrain; w3 joins", flush=True)
                cluster.kill("w2")
                threading.Thread(target=cluster.add_worker, args=("w3",), daemon=True).start()

        rc, out = run_pipeline(cmd, driver_env, kill_mid_pretrain)
        check(rc == 0, f"the pipeline finished through {args.to} (exit {rc})")
        trains = "pretrain" in _stages_through(args.to)
        if trains:
            check(bool(killed), "a worker node was killed mid-pretrain")
            steps = [int(m) for m in re.findall(r"\[pretrain\] step (\d+)/", out)]
            check(bool(steps) and steps[-1] == 24, "pretrain reached its last step after the kill")
            check("resuming at step 8" in out, "the restarted worker group resumed at step 8")
            # Every node's own cache: a worker reads its split from its node's copy. (Ray
            # Train's node_rank cannot tell these nodes apart: they share one IP address.)
            copies = {
                f"w{i}": sorted(os.listdir(tmp / f"cache-w{i}"))
                if (tmp / f"cache-w{i}").is_dir()
                else []
                for i in (1, 2, 3)
            }
            check(
                all(".lock" in copies[w] and len(copies[w]) > 1 for w in ("w1", "w2", "w3")),
                "training read a node-local copy on each node it ran on (w1, w2, then w3)",
            )
            check(
                all(not any(x.startswith(".tmp-") for x in v) for v in copies.values()),
                f"no half-made copies on any node: {copies}",
            )
        rc2, out2 = run_pipeline(cmd, driver_env)
        ran = re.findall(r"\[(\w+)\] done in", out2)
        check(rc2 == 0 and not ran, f"the rerun skipped every stage (ran: {ran or 'none'})")
        fresh = re.findall(r"^\[(\w+)\] up to date", out2, flags=re.M)
        check(
            fresh == _stages_through(args.to),
            f"the rerun reported each stage up to date, in order: {fresh}",
        )
        if trains:
            serve_from_the_bucket(driver_env, f"{root}/{RUN}", tmp, check)
    finally:
        cluster.stop()
        s3.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"rehearsal: {len(check.failed)} failed check(s) in {time.time() - t_start:.0f}s")
    return 1 if check.failed else 0


def serve_from_the_bucket(env: dict[str, str], run_uri: str, tmp: Path, check: Checks) -> None:
    """``phi-ray serve`` of the run's exported model, straight from the object store; one
    completion through the ``openai`` client and one quality score; then SIGINT."""
    import httpx
    import openai

    port, key, t0 = free_port(), secrets.token_hex(16), time.time()
    url = f"http://127.0.0.1:{port}"
    model = f"{run_uri}/finetune/model"
    runs_dir, run = run_uri.rsplit("/", 1)
    cmd = [sys.executable, "-m", "phi_ray.cli", "serve", "--preset", "tiny", "--run", run]
    cmd += ["--runs-dir", runs_dir, "--model", model, "--port", str(port)]
    proc = subprocess.Popen(
        cmd,
        env=dict(env, PHI_RAY_API_KEY=key),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    ready = threading.Event()

    def echo() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(f"  | {line}")
            if line.startswith("phi-ray serve: ") and " at http" in line:
                ready.set()
        ready.set()  # exited: stop waiting

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        ready.wait(600)
        if not check(proc.poll() is None and ready.is_set(), f"phi-ray serve --model {model}"):
            return
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)
        served = [m.id for m in client.models.list().data]
        r = client.completions.create(
            model=served[0], prompt="def add(a, b):\n", max_tokens=8, temperature=0
        )
        check(
            isinstance(r.choices[0].text, str) and r.usage.completion_tokens >= 1,
            f"openai completions from the bucket's model: {r.choices[0].text!r}",
        )
        q = httpx.post(
            f"{url}/v1/quality",
            json={"code": ["def f(x):\n    return x\n"]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=300,
        )
        check(
            q.status_code == 200 and 0.0 <= q.json()["data"][0]["score"] <= 1.0,
            f"/v1/quality from the run's classifier in the bucket: {q.status_code} {q.text[:200]}",
        )
        # localize() touches a copy each time it hands it out (evaluate made some before).
        used = [
            f"{d.parent.name}/{d.name}"
            for d in tmp.glob("cache-*/*")
            if (d / "config.json").is_file() and d.stat().st_mtime >= t0
        ]
        check(bool(used), f"serve's replicas read node-local copies of the model: {used}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: serve.shutdown(), then exit
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        reader.join(timeout=10)
    check(
        rc == 0 and any("shutting down" in line for line in lines),
        f"SIGINT shut serve down (exit {rc})",
    )
    try:
        httpx.get(f"{url}/v1/models", timeout=5)
        gone = False
    except httpx.TransportError:
        gone = True
    check(gone, f"nothing answers on {url} after the shutdown")


def _stages_through(stop: str) -> list[str]:
    from phi_ray.stages import ORDER

    return ORDER[: ORDER.index(stop) + 1]


if __name__ == "__main__":
    sys.exit(main())
