import json
import os

import pytest

from phi_ray.runs import SUCCESS, RunDir


def test_stage_commit_and_skip(tmp_path):
    run = RunDir(str(tmp_path), "r")
    with run.stage("ingest", "h1") as out:
        assert not out.skipped
        with open(os.path.join(out.tmp, "part-0.txt"), "w") as f:
            f.write("x")
        res = out.finish(counts={"files_out": 1})
    assert os.path.exists(os.path.join(run.stage_path("ingest"), "part-0.txt"))
    success = json.load(open(os.path.join(run.stage_path("ingest"), SUCCESS)))
    assert success["config_hash"] == "h1" and success["counts"] == {"files_out": 1}
    assert "ray" in success["versions"] and "torch" in success["versions"]
    assert res.counts["files_out"] == 1
    with run.stage("ingest", "h1") as out:
        assert out.skipped and out.result.counts == {"files_out": 1}
    # a changed config reruns and replaces the output
    with run.stage("ingest", "h2") as out:
        assert not out.skipped
        out.finish(counts={"files_out": 2})
    assert run.read_success("ingest")["config_hash"] == "h2"
    assert not os.path.exists(os.path.join(run.stage_path("ingest"), "part-0.txt"))


def test_crash_leaves_no_output(tmp_path):
    run = RunDir(str(tmp_path), "r")
    with pytest.raises(RuntimeError, match="boom"), run.stage("pack", "h") as out:
        open(os.path.join(out.tmp, "half.bin"), "w").write("partial")
        raise RuntimeError("boom")
    assert not run.is_complete("pack")
    assert not os.path.exists(run.stage_path("pack"))
    assert [p for p in os.listdir(run.base) if p.startswith("pack")] == []
    with pytest.raises(FileNotFoundError, match="phi-ray pack --run r"):
        run.require("pack", needed_by="pretrain")


def test_block_without_finish_is_an_error(tmp_path):
    run = RunDir(str(tmp_path), "r")
    with pytest.raises(RuntimeError, match="without finish"), run.stage("x", "h"):
        pass
    assert not run.is_complete("x")


def test_work_dir_survives_and_json_is_atomic(tmp_path):
    run = RunDir(str(tmp_path), "r")
    w = run.work_path("annotate")
    assert os.path.isdir(w)
    run.write_json(os.path.join(w, "state.json"), {"done": 3})
    assert json.load(open(os.path.join(w, "state.json"))) == {"done": 3}
    assert [f for f in os.listdir(w) if ".tmp-" in f] == []


def test_bad_run_names(tmp_path):
    for name in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError):
            RunDir(str(tmp_path), name)


def test_config_hash_follows_upstream(tmp_path, tiny_cfg):
    run = RunDir(str(tmp_path), "r")
    h0 = run.config_hash(tiny_cfg, ("annotate",), ("ingest",))
    with run.stage("ingest", "a") as out:
        out.finish()
    h1 = run.config_hash(tiny_cfg, ("annotate",), ("ingest",))
    with run.stage("ingest", "b") as out:
        out.finish()
    h2 = run.config_hash(tiny_cfg, ("annotate",), ("ingest",))
    assert len({h0, h1, h2}) == 3
    assert h2 == run.config_hash(tiny_cfg, ("annotate",), ("ingest",))
