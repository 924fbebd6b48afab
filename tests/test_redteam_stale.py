"""Red-team stale skips: input files a config names only by path (the topic tree, a local
MBPP file) must change the hash of every stage that reads them when they are edited."""

from __future__ import annotations

import os
import time

from phi_ray.config import load_config, resolve_path
from phi_ray.runs import RunDir


def _edit(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
    st = os.stat(path)  # a later mtime even on a coarse clock
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))


def test_editing_the_topic_tree_reruns_synth(tmp_path):
    from phi_ray.synth.stage import stage_hash

    tree = tmp_path / "topics.yaml"
    tree.write_text(open(resolve_path(load_config("tiny").synth.topic_tree)).read())
    sets = [f"synth.topic_tree={tree}", "synth.source=llm", "llm.base_url=http://127.0.0.1:9/v1"]
    cfg = load_config("tiny", sets)
    run = RunDir(str(tmp_path / "runs"), "r")
    before = stage_hash(cfg, run)
    assert stage_hash(cfg, run) == before  # unchanged input: still skipped
    _edit(tree, tree.read_text() + "\n# one more topic\n")
    assert stage_hash(cfg, run) != before


def test_editing_a_local_mbpp_file_reruns_decontam_and_evaluate(tmp_path):
    from phi_ray.decontam.stage import config_hash
    from phi_ray.evaluate.stage import _fingerprint

    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text('{"task_id": 1}\n')
    cfg = load_config("tiny", [f"decontam.mbpp_path={mbpp}", f"evaluate.mbpp_path={mbpp}"])
    run = RunDir(str(tmp_path / "runs"), "r")
    before = (config_hash(cfg, run), _fingerprint("endpoint", "http://x", cfg))
    time.sleep(0.01)
    _edit(mbpp, '{"task_id": 2}\n')
    after = (config_hash(cfg, run), _fingerprint("endpoint", "http://x", cfg))
    assert after[0] != before[0] and after[1] != before[1]


def test_an_object_store_model_rewritten_in_place_reruns_evaluate(tmp_path):
    # evaluate --model s3://... was fingerprinted by its URI alone: new weights at the same
    # URI kept the old pass@k "up to date". (file:// goes through the same URI listing.)
    from phi_ray.evaluate.stage import _fingerprint

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"v1")
    cfg = load_config("tiny")
    uri = f"file://{model}"
    before = _fingerprint("model", uri, cfg)
    assert _fingerprint("model", uri, cfg) == before
    _edit(model / "model.safetensors", "v2 weights")
    assert _fingerprint("model", uri, cfg) != before
