"""No stale skips: a stage reruns when an upstream stage's OUTPUT changed or ingest's inputs
did, and an unchanged rerun still skips everything. Plus run names and SIGKILL leftovers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from phi_ray.config import ConfigError, load_config
from phi_ray.corpus.stage import input_fingerprint
from phi_ray.runs import SUCCESS, RunDir, tree_fingerprint

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _stage(run: RunDir, cfg, name: str, upstream: tuple[str, ...], data: int, inputs: str = ""):
    """A cheap stage with the real hash -> skip -> work -> finish shape; True if it ran."""
    with run.stage(name, run.config_hash(cfg, ("run",), upstream, inputs=inputs)) as out:
        if out.skipped:
            return False
        out.finish(counts={"rows": data})
        return True


def _chain(run, cfg, data: int, inputs: str = "") -> list[bool]:
    return [
        _stage(run, cfg, "ingest", (), data, inputs),
        _stage(run, cfg, "annotate", ("ingest",), 1),
        _stage(run, cfg, "classify", ("ingest", "annotate"), 1),
    ]


def test_upstream_rerun_with_new_data_reruns_every_downstream_stage(tmp_path, tiny_cfg):
    run = RunDir(str(tmp_path), "r")
    assert _chain(run, tiny_cfg, 10, "files-v1") == [True, True, True]
    assert _chain(run, tiny_cfg, 10, "files-v1") == [False, False, False]
    before = {s: run.output_fingerprint(s) for s in ("ingest", "annotate", "classify")}
    # same config, new input data: ingest reruns, and so does everything after it, although
    # no downstream config changed (upstream *config* hashes are all unchanged)
    ingest_cfg_hash = run.read_success("ingest")["config_hash"]
    assert _chain(run, tiny_cfg, 12, "files-v2") == [True, True, True]
    assert run.read_success("classify")["config_hash"] != ""
    assert all(run.output_fingerprint(s) != before[s] for s in before)
    assert run.read_success("ingest")["config_hash"] != ingest_cfg_hash
    assert _chain(run, tiny_cfg, 12, "files-v2") == [False, False, False]


def test_a_forced_upstream_rerun_with_the_same_config_reruns_downstream(tmp_path, tiny_cfg):
    run = RunDir(str(tmp_path), "r")
    _chain(run, tiny_cfg, 10)
    h = run.config_hash(tiny_cfg, ("run",))
    with run.stage("ingest", h, force=True) as out:  # identical config hash, new output
        out.finish(counts={"rows": 11})
    assert run.read_success("ingest")["config_hash"] == h
    assert _chain(run, tiny_cfg, 11) == [False, True, True]


def test_output_fingerprint_is_stable_across_skips(tmp_path, tiny_cfg):
    run = RunDir(str(tmp_path), "r")
    assert run.output_fingerprint("ingest") == "-"
    _chain(run, tiny_cfg, 10)
    fp = run.output_fingerprint("ingest")
    marker = Path(run.stage_path("ingest"), SUCCESS).read_bytes()
    for _ in range(3):
        assert _chain(run, tiny_cfg, 10) == [False, False, False]
    assert run.output_fingerprint("ingest") == fp
    assert Path(run.stage_path("ingest"), SUCCESS).read_bytes() == marker


def _local_cfg(tmp_path: Path, src: Path, *more: str):
    return load_config(
        "tiny",
        [
            f"run.root={tmp_path / 'runs'}",
            "run.name=t",
            f"corpus.sources=[{{kind: local_dir, path: '{src}'}}]",
            *more,
        ],
    )


def test_input_fingerprint_follows_the_local_dir_listing(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    for n in ("bisect", "heapq"):
        shutil.copy(STDLIB / f"{n}.py", src / "pkg" / f"{n}.py")
    cfg = _local_cfg(tmp_path, src)
    fp = input_fingerprint(cfg.corpus)
    assert input_fingerprint(cfg.corpus) == fp  # deterministic
    (src / "notes.txt").write_text("not an input")
    assert input_fingerprint(cfg.corpus) == fp  # only what the reader reads counts
    shutil.copy(STDLIB / "glob.py", src / "pkg" / "glob.py")  # a new file
    fp_added = input_fingerprint(cfg.corpus)
    assert fp_added != fp
    p = src / "pkg" / "glob.py"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # rewritten in place
    assert input_fingerprint(cfg.corpus) not in (fp, fp_added)
    p.unlink()
    (src / "pkg" / "sub").mkdir()
    (src / "pkg" / "sub" / "x.py").write_text("x = 1\n")
    assert input_fingerprint(cfg.corpus) not in (fp, fp_added)
    shutil.rmtree(src)
    assert input_fingerprint(cfg.corpus) not in (fp, fp_added)  # missing: its own value


def test_input_fingerprint_of_stdlib_and_parquet(tmp_path):
    stdlib = load_config("tiny").corpus
    assert input_fingerprint(stdlib) == input_fingerprint(stdlib)
    d = tmp_path / "stack"
    d.mkdir()
    (d / "a.parquet").write_bytes(b"PAR1")
    fp = tree_fingerprint(str(d), (".parquet",))
    (d / "b.parquet").write_bytes(b"PAR1")
    assert tree_fingerprint(str(d), (".parquet",)) != fp
    one = tree_fingerprint(str(d / "a.parquet"), (".parquet",))  # a single file as the source
    (d / "a.parquet").write_bytes(b"PAR1 and more")
    assert tree_fingerprint(str(d / "a.parquet"), (".parquet",)) != one


def test_a_file_added_to_local_dir_reruns_ingest_and_what_follows(tmp_path, ray_session):
    """Real stages: ingest + annotate over a local tree; one file added; both rerun."""
    from phi_ray.pipeline import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    for n in ("bisect", "heapq", "fnmatch", "shlex", "colorsys"):
        shutil.copy(STDLIB / f"{n}.py", src / f"{n}.py")
    cfg = _local_cfg(tmp_path, src, "corpus.dedup.near=false", "corpus.dedup.exact=false")
    quiet: list[str] = []
    first = run_pipeline(cfg, stop="annotate", echo=quiet.append)
    assert first.ran == ["ingest", "annotate"], quiet
    assert run_pipeline(cfg, stop="annotate", echo=quiet.append).skipped == ["ingest", "annotate"]
    files_in = first.results["ingest"].counts["files_in"]
    shutil.copy(STDLIB / "queue.py", src / "queue.py")
    again = run_pipeline(cfg, stop="annotate", echo=quiet.append)
    assert again.ran == ["ingest", "annotate"], quiet
    assert again.results["ingest"].counts["files_in"] == files_in + 1


# --------------------------------------------------------------------------- run names


@pytest.mark.parametrize(
    "name", ["a?b", "a#b", "a/b", "..", "a..b", "", ".hidden", "-x", "a b", "a%2Fb", "é", "x" * 129]
)
def test_unsafe_run_names_are_config_errors_naming_the_value(tmp_path, name):
    with pytest.raises(ConfigError, match="not a valid run name") as e:
        RunDir(str(tmp_path), name)
    assert repr(name) in str(e.value)
    with pytest.raises(ConfigError, match=r"run\.name"):
        load_config("tiny", [f"run.name={name}"])
    assert os.listdir(tmp_path) == []


def test_safe_run_names(tmp_path):
    for name in ("2024", "run-1.2_x", "A"):
        assert RunDir(str(tmp_path), name).name == name
        assert load_config("tiny", [f"run.name={name}"]).run.name == name


# --------------------------------------------------------------------------- SIGKILL leftovers

_KILLED = textwrap.dedent(
    """
    import os, sys, time
    from phi_ray.runs import RunDir
    run = RunDir(sys.argv[1], "r")
    with run.stage("pack", "h1", force=True) as out:
        with run.fs.open_output_stream(run._fs_path(out.tmp) + "/half.bin") as f:
            f.write(b"x" * 1000)
        print("ready", flush=True)
        time.sleep(60)
    """
)


def _kill_mid_stage(root: Path | str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(root)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()


def _leftovers(run: RunDir) -> list[str]:
    return sorted(p for p in os.listdir(run.base) if ".tmp-" in p or ".old-" in p)


def test_sigkill_leftovers_are_removed_by_the_next_run_of_the_stage(tmp_path):
    run = RunDir(str(tmp_path), "r")
    with run.stage("pack", "h1") as out:
        out.finish(counts={"n": 1})
    _kill_mid_stage(tmp_path)
    left = _leftovers(run)
    assert len(left) == 1 and left[0].startswith("pack.tmp-")
    Path(run.base, "pack.old-deadbeef").mkdir()  # a kill between the two renames of finish
    Path(run.base, "packer.tmp-1234").mkdir()  # another stage's: not ours to remove
    t0 = time.time()
    with run.stage("pack", "h1") as out:  # even a skip cleans up
        assert out.skipped
    assert _leftovers(run) == ["packer.tmp-1234"] and time.time() - t0 < 5
    assert run.read_success("pack")["counts"] == {"n": 1}  # the finished output is untouched
    _kill_mid_stage(tmp_path)
    with run.stage("pack", "h2") as out:  # and so does a real rerun
        assert not out.skipped and len(_leftovers(run)) == 2  # its own tmp + packer's
        out.finish(counts={"n": 2})
    assert _leftovers(run) == ["packer.tmp-1234"]


@pytest.fixture
def s3_root(monkeypatch):
    """A bucket on moto's S3 server (real HTTP), this process pointed at it by env vars."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(k, v)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/bkt", method="PUT")).close()
    yield "s3://bkt/runs"
    server.stop()


def test_object_store_leftovers_and_input_fingerprint(s3_root):
    import pyarrow.fs as pafs

    run = RunDir(s3_root, "r")
    with run.stage("pack", "h1") as out:
        out.finish(counts={"n": 1})
    _kill_mid_stage(s3_root)

    def names() -> list[str]:
        return sorted(i.base_name for i in run.fs.get_file_info(pafs.FileSelector(run.base)))

    assert len(names()) == 2 and names()[1].startswith("pack.tmp-")
    with run.stage("pack", "h1") as out:
        assert out.skipped
    assert names() == ["pack"]
    # an object store source: a new object is new input
    src = f"{s3_root}/src"
    fs, base = pafs.FileSystem.from_uri(src)
    with fs.open_output_stream(f"{base}/a.parquet") as f:
        f.write(b"PAR1")
    fp = tree_fingerprint(src, (".parquet",))
    assert tree_fingerprint(src, (".parquet",)) == fp
    with fs.open_output_stream(f"{base}/b.parquet") as f:
        f.write(b"PAR1")
    assert tree_fingerprint(src, (".parquet",)) != fp
