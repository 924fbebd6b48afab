"""Training from an object-store run (moto's S3 server): one node-local copy, no races, no
orphans; and, behind ``slow``, pretrain -> finetune with 2 workers reading and writing s3://."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.fs as pafs
import pytest
from s3_server import S3Server

from phi_ray.train.data import CACHE_ENV, TokenWindows, localize

BUCKET = "phi"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with S3Server(log) as server:
        server.create_bucket(BUCKET)
        with server.env_applied():
            yield server, log


def _put_split(uri: str, shards: list[np.ndarray]) -> None:
    """A token split as pack writes it: shard-*.npy and a manifest, uploaded to ``uri``."""
    fs, root = pafs.FileSystem.from_uri(uri)
    entries = []
    for i, a in enumerate(shards):
        name = f"shard-{i:05d}.npy"
        with fs.open_output_stream(f"{root}/{name}") as f:
            np.save(f, a)
        entries.append({"file": name, "n_windows": len(a)})
    manifest = {"seq_len": shards[0].shape[1] - 1, "shards": entries}
    with fs.open_output_stream(f"{root}/manifest.json") as f:
        f.write(json.dumps(manifest).encode())


def _gets(log, key: str) -> int:
    """How many times the server was asked for the object ``key`` (each full download)."""
    pat = re.compile(rf'"GET /{BUCKET}/{re.escape(key)} HTTP')
    return sum(1 for line in open(log, errors="replace") if pat.search(line))


def _localize_in_child(args) -> str:
    uri, cache = args
    return localize(uri, cache)


def _windows(seed: int, n: int, t: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 50000, (n, t + 1), dtype=np.uint16)


def test_workers_on_one_node_share_one_copy(s3, tmp_path, monkeypatch):
    _, log = s3
    uri = f"s3://{BUCKET}/race/pack/pretrain/train"
    shards = [_windows(1, 3000), _windows(2, 500)]
    _put_split(uri, shards)
    cache = str(tmp_path / "cache")
    monkeypatch.setenv(CACHE_ENV, cache)
    # Four real processes start at once, as the Ray Train workers of one node do.
    with mp.get_context("spawn").Pool(4) as pool:
        dests = pool.map(_localize_in_child, [(uri, None)] * 4)
    assert len(set(dests)) == 1
    assert sorted(os.listdir(cache)) == [".lock", os.path.basename(dests[0])]
    # One download of each file in all (four would mean a copy per worker).
    assert _gets(log, "race/pack/pretrain/train/shard-00000.npy") == 1
    w = TokenWindows(uri)  # this process: the same copy, no new download
    assert w.path == dests[0]
    np.testing.assert_array_equal(
        w.take(np.array([0, 3000, 3499])), np.concatenate(shards)[[0, 3000, 3499]]
    )
    assert _gets(log, "race/pack/pretrain/train/shard-00000.npy") == 1


def test_a_changed_split_is_copied_afresh_and_the_old_copy_removed(s3, tmp_path):
    uri = f"s3://{BUCKET}/changed/train"
    cache = str(tmp_path / "cache")
    _put_split(uri, [_windows(3, 100)])
    first = localize(uri, cache)
    time.sleep(1.1)  # S3 mtimes have one-second resolution
    _put_split(uri, [_windows(4, 100)])  # repacked: same shape and names, new content
    second = localize(uri, cache)
    assert second != first and not os.path.exists(first)
    np.testing.assert_array_equal(np.load(f"{second}/shard-00000.npy"), _windows(4, 100))


def _copy_then_hang(uri: str, cache: str) -> None:
    """A copier that dies mid-copy: its download never finishes (see the test)."""
    localize(uri, cache)


def test_a_copier_killed_mid_copy_leaves_no_orphan_and_no_held_lock(s3, tmp_path):
    uri = f"s3://{BUCKET}/killed/train"
    # Many files: the copy (one request each) is still running when the kill comes.
    _put_split(uri, [_windows(i, 100) for i in range(80)])
    cache = str(tmp_path / "cache")
    child = mp.get_context("spawn").Process(target=_copy_then_hang, args=(uri, cache))
    child.start()
    end = time.monotonic() + 60
    while not any(n.startswith(".tmp-") for n in _ls(cache)) and time.monotonic() < end:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)  # as an OOM kill or a lost worker
    child.join()
    orphans = [n for n in _ls(cache) if n.startswith(".tmp-")]
    assert orphans, "the child was killed after its copy finished; make the split larger"
    dest = localize(uri, cache)  # the lock is free again, and the orphan goes
    assert sorted(os.listdir(cache)) == [".lock", os.path.basename(dest)]
    assert TokenWindows(dest).n == 8000


def _ls(d: str) -> list[str]:
    return os.listdir(d) if os.path.isdir(d) else []


def test_local_paths_are_used_in_place(tmp_path):
    assert localize(str(tmp_path)) == str(tmp_path)


def test_a_missing_object_store_split_says_so(s3, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        localize(f"s3://{BUCKET}/nothing/here", str(tmp_path / "cache"))


CHAIN = [
    "pretrain.max_steps=4",
    "pretrain.global_batch=8",
    "pretrain.micro_batch=4",
    "pretrain.num_workers=2",
    "pretrain.lr=1.0e-2",
    "pretrain.warmup_steps=1",
    "pretrain.checkpoint_every=2",
    "pretrain.eval_every=2",
    "pretrain.eval_batches=1",
    "pretrain.log_every=2",
    "finetune.max_steps=2",
    "finetune.global_batch=8",
    "finetune.micro_batch=4",
    "finetune.num_workers=2",
    "finetune.warmup_steps=1",
    "finetune.checkpoint_every=2",
    "finetune.eval_every=1",
    "finetune.eval_batches=1",
    "finetune.log_every=1",
    "run.num_cpus=2",
]


def _download(uri: str, dest) -> str:
    fs, path = pafs.FileSystem.from_uri(uri)
    os.makedirs(dest)
    pafs.copy_files(path, str(dest), fs, pafs.LocalFileSystem())
    return str(dest)


@pytest.mark.slow
def test_pretrain_and_finetune_read_and_write_an_s3_run_with_two_workers(s3, tmp_path, tokenizer):
    """The README's cluster command on one node: `phi-ray run` (no terminal) with the runs
    dir on S3, two Ray Train workers racing for the same token split."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from train_fixtures import TINY, train_cfg, write_pack
    from transformers import AutoModelForCausalLM

    from phi_ray.runs import RunDir

    server, log = s3
    root = f"s3://{BUCKET}/runs"
    run = RunDir.from_config(train_cfg(root, "chain", *CHAIN))
    write_pack(run, tokenizer)
    cache = tmp_path / "node-cache"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(server.env, PHI_RAY_NODE_CACHE=str(cache))
    cmd = [sys.executable, "-m", "phi_ray.cli", "run", "--from", "pretrain", "--to", "finetune"]
    cmd += ["--runs-dir", root, "--run", "chain", *(f"--set={o}" for o in TINY + CHAIN)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    both = out.stdout + out.stderr

    # Progress lines, as `ray job submit` shows them: every log_every steps, with an ETA.
    for line in ("[pretrain] step 2/4 | loss", "[pretrain] step 4/4 |", "[finetune] step 1/2 |"):
        assert line in both, line
    assert re.search(
        r"\[pretrain\] step 4/4 \| loss [\d.]+ \| val [\d.]+ \| lr .* tok/s \| MFU", both
    )

    # One copy of each split (and of the pretrained model) on this node, none left half-made.
    entries = sorted(os.listdir(cache))
    assert entries[0] == ".lock" and len(entries) == 1 + 5, entries  # 2 phases x 2 splits + model
    shards = run.fs.get_file_info(pafs.FileSelector(f"{BUCKET}/runs/chain/pack", recursive=True))
    for f in (i for i in shards if i.base_name.endswith(".npy")):
        assert _gets(log, f.path.split("/", 1)[1]) == 1, f.path

    # Outputs, curves and checkpoints are all in the bucket.
    for phase in ("pretrain", "finetune"):
        assert run.is_complete(phase)
        ok = run.read_success(phase)
        assert ok["tensorboard"].startswith(f"{root}/chain/tensorboard/{phase}/")
        tb = _download(ok["tensorboard"], tmp_path / f"tb-{phase}")
        acc = EventAccumulator(tb)
        acc.Reload()
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, ok["steps"] + 1))
        with run.fs.open_input_stream(f"{BUCKET}/runs/chain/{phase}/metrics.jsonl") as f:
            m = [json.loads(x) for x in f.read().decode().splitlines()]
        assert [r["step"] for r in m] == list(range(1, ok["steps"] + 1))
        assert ok["checkpoint"].startswith(f"{BUCKET}/runs/chain/.work/{phase}/")
    pre = run.read_success("pretrain")["final_metrics"]["loss"]
    first_ft = m[0]["loss"]  # finetune's, from its pretrained start: far below a fresh 10.9
    assert first_ft < 10.5 and abs(first_ft - pre) < 1.0, (first_ft, pre)
    model = _download(f"{root}/chain/finetune/model", tmp_path / "model")
    assert AutoModelForCausalLM.from_pretrained(model).config.hidden_size == 64

    # A rerun finds both stages done and trains nothing.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "step 1/" not in again.stdout + again.stderr
    assert again.stdout.count("skipped") >= 2, again.stdout[-2000:]
