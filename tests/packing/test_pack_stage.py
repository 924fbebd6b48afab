"""pack: Ray Data tokenization, EOS-joined stream, windows, deterministic shuffle, val split."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
from pack_fixtures import write_upstream

from phi_ray.config import load_config
from phi_ray.model.tokenizer import EOS_ID
from phi_ray.packing.stage import run as pack_run
from phi_ray.runs import RunDir


def _cfg(tmp_path, name="p", *extra):
    return load_config(
        "tiny",
        [
            f"run.root={tmp_path / 'runs'}",
            f"run.name={name}",
            "pack.seq_len=64",
            "pack.windows_per_shard=100",
            "pack.val_fraction=0.1",
            *extra,
        ],
    )


def _load(split_dir):
    m = json.load(open(os.path.join(split_dir, "manifest.json")))
    arrs = [np.load(os.path.join(split_dir, s["file"])) for s in m["shards"]]
    return m, (np.concatenate(arrs) if arrs else np.zeros((0, m["seq_len"] + 1), np.uint16))


def _stream(windows, seq_len):
    """Undo the stride-seq_len cut: the token stream the windows were cut from."""
    if not len(windows):
        return np.zeros(0, np.uint16)
    return np.concatenate([windows[:, :seq_len].reshape(-1), windows[-1, seq_len:]])


def _h(seed, salt, doc_id):
    return (
        int.from_bytes(hashlib.sha256(f"{seed}:{salt}:{doc_id}".encode()).digest()[:8], "big") >> 1
    )


@pytest.fixture(scope="module")
def packed(ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pack")
    cfg = _cfg(tmp)
    run = RunDir.from_config(cfg)
    write_upstream(run)
    res = pack_run(cfg, run)
    return cfg, run, res


def test_pack_windows_match_an_independent_reference(packed, tokenizer):
    cfg, run, res = packed
    seq = cfg.pack.seq_len
    assert not res.skipped and res.counts["finetune_train_windows"] > 0
    ex = pd.read_parquet(run.path("synth", "exercises"))
    # Reference: documents ordered by the seeded hash, split by another, joined with EOS.
    docs = sorted(ex.itertuples(), key=lambda r: _h(cfg.run.seed, "order", r.id))
    cut = int(cfg.pack.val_fraction * 2**63)
    for split in ("train", "val"):
        m, w = _load(os.path.join(res.path, "finetune", split))
        assert w.dtype == np.uint16 and w.shape == (m["n_windows"], seq + 1)
        assert m["n_tokens"] == m["n_windows"] * seq and m["seq_len"] == seq
        want = []
        for r in docs:
            if (_h(cfg.run.seed, "val", r.id) < cut) != (split == "val"):
                continue
            text = (
                r.prompt + r.completion
                if r.prompt.endswith("\n")
                else r.prompt + "\n" + r.completion
            )
            want += tokenizer(text, add_special_tokens=False)["input_ids"] + [EOS_ID]
        got = _stream(w, seq)
        assert got.size > 0, split
        np.testing.assert_array_equal(got, np.array(want[: got.size], dtype=np.uint16))
        assert len(want) - got.size == m["dropped_tail_tokens"] < seq
        assert m["n_docs"] == sum(s["docs"] for s in m["sources"].values())
    # Shards respect windows_per_shard; several shards for the bigger pretrain mix.
    m, w = _load(os.path.join(res.path, "pretrain", "train"))
    assert len(m["shards"]) > 1 and all(s["n_windows"] <= 100 for s in m["shards"])
    assert set(m["sources"]) == {"filtered", "textbooks"}
    assert (w == EOS_ID).sum() >= m["n_docs"] - 1
    assert (
        json.load(open(os.path.join(res.path, "_SUCCESS.json")))["counts"]["pretrain_val_windows"]
        > 0
    )


def test_pack_is_deterministic_by_seed_and_skips_when_done(packed, tmp_path):
    cfg, run, res = packed
    assert pack_run(cfg, run).skipped
    _, a = _load(os.path.join(res.path, "pretrain", "train"))
    # Same inputs, another run directory, another seed.
    cfg2 = _cfg(tmp_path, "p2", "run.seed=7")
    run2 = RunDir.from_config(cfg2)
    write_upstream(run2, with_decontam=True)
    res2 = pack_run(cfg2, run2)
    _, b = _load(os.path.join(res2.path, "pretrain", "train"))
    assert not np.array_equal(a[: len(b)], b[: len(a)])  # another seed, another order
    # decontam complete: finetune packs its (smaller) pruned exercises instead of synth's.
    m1, _ = _load(os.path.join(res.path, "finetune", "train"))
    m2, _ = _load(os.path.join(res2.path, "finetune", "train"))
    assert m2["n_docs"] < m1["n_docs"]


def test_pack_needs_score(ray_session, tmp_path):
    cfg = _cfg(tmp_path, "empty")
    with pytest.raises(FileNotFoundError, match="'score' stage"):
        pack_run(cfg, RunDir.from_config(cfg))


def test_pack_partitions_are_key_ranges_packed_by_their_own_tasks(ray_session, tmp_path, tokenizer):
    """Several key ranges: each range's stream is its documents in seeded order, ranges in
    order; shards of every range are listed in the manifest; a repeat is byte-identical."""
    from phi_ray.packing.stage import pack_dataset, plan_sources
    from phi_ray.packing.windows import partition_of

    cfg = _cfg(tmp_path, "parts", "pack.tokens_per_partition=12000")
    run = RunDir.from_config(cfg)
    write_upstream(run)
    sources = plan_sources(cfg, run)["finetune"]
    pack_dataset(cfg, run, sources, str(tmp_path / "a"))
    seq = cfg.pack.seq_len
    m, w = _load(str(tmp_path / "a" / "train"))
    n_parts = m["partitions"]
    assert n_parts > 2
    assert len({s["file"].split("-shard")[0] for s in m["shards"]}) > 2
    ex = pd.read_parquet(run.path("synth", "exercises"))
    cut = int(cfg.pack.val_fraction * 2**63)
    docs = sorted(
        (r for r in ex.itertuples() if _h(cfg.run.seed, "val", r.id) >= cut),
        key=lambda r: _h(cfg.run.seed, "order", r.id),
    )
    keys = np.array([_h(cfg.run.seed, "order", r.id) for r in docs], dtype=np.int64)
    part = partition_of(keys, n_parts)
    # Windows of each range, in manifest order, against that range's reference stream.
    start = 0
    dropped = 0
    for p in range(n_parts):
        shards = [s for s in m["shards"] if s["file"].startswith(f"part-{p:05d}-")]
        n = sum(s["n_windows"] for s in shards)
        want = []
        for r, rp in zip(docs, part, strict=True):
            if rp != p:
                continue
            text = (
                r.prompt + r.completion
                if r.prompt.endswith("\n")
                else f"{r.prompt}\n{r.completion}"
            )
            want += tokenizer(text, add_special_tokens=False)["input_ids"] + [EOS_ID]
        got = _stream(w[start : start + n], seq)
        np.testing.assert_array_equal(got, np.array(want[: got.size], dtype=np.uint16))
        dropped += len(want) - got.size
        start += n
    assert start == m["n_windows"] and dropped == m["dropped_tail_tokens"]
    # The same inputs again: byte-identical shards.
    pack_dataset(cfg, run, sources, str(tmp_path / "b"))
    _, w2 = _load(str(tmp_path / "b" / "train"))
    np.testing.assert_array_equal(w, w2)
