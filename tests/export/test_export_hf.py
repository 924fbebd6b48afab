"""The exported model directory, read as other loaders read it (transformers 5.x here).

The model is deliberately not phi-1-shaped where a loader's fallback would hide a missing
key: its MLP is 3x wide (vLLM falls back to 4x without ``n_inner``) and its rotary factor is
0.25 (transformers 4.x falls back to 0.5 without the top-level key).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from export_model import SAMPLES, export_tiny, stdlib_files
from safetensors import safe_open

from phi_ray.model.tokenizer import _gpt2_files, get_tokenizer
from phi_ray.train.checkpoint import phi1_compatible_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("export") / "model")


def test_config_has_the_keys_every_phi_loader_reads(exported):
    d, _ = exported
    cfg = json.loads((d / "config.json").read_text())
    rope = cfg["rope_parameters"]
    assert cfg["partial_rotary_factor"] == rope["partial_rotary_factor"] == 0.25
    assert cfg["rope_theta"] == rope["rope_theta"] == 10000.0
    assert cfg["dtype"] == cfg["torch_dtype"] == "float32"
    # vLLM's PhiMLP: n_inner if set, else 4 * hidden_size; it never reads intermediate_size
    vllm_inner = cfg.get("n_inner") or 4 * cfg["hidden_size"]
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        fc1 = f.get_slice("model.layers.0.mlp.fc1.weight").get_shape()
    assert vllm_inner == cfg["intermediate_size"] == fc1[0] == 3 * cfg["hidden_size"]
    assert not cfg["tie_word_embeddings"]  # vLLM's Phi asserts it (lm_head has a bias)


def test_tokenizer_files_are_phi1s(exported):
    d, _ = exported
    tc = json.loads((d / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "CodeGenTokenizer"
    assert not {"backend", "is_local", "local_files_only"} & tc.keys()
    assert tc["eos_token"] == tc["bos_token"] == "<|endoftext|>"
    dec = tc["added_tokens_decoder"]
    assert dec["50256"]["special"] and not dec["50257"]["special"]
    assert dec["50257"]["content"] == " " * 31 and dec["50294"]["content"] == "\t\t"
    # exactly GPT-2's BPE files, which codegen-350M-mono ships (merges such as "# #" too)
    encoder, bpe = _gpt2_files()
    assert json.loads((d / "vocab.json").read_text()) == json.loads(encoder.read_text())
    merges = (d / "merges.txt").read_text().splitlines()
    assert merges[1:] == bpe.read_text().splitlines()[1:]
    assert len(merges) == 50001 and "## ##" in merges
    added = json.loads((d / "added_tokens.json").read_text())
    assert sorted(added.values()) == list(range(50257, 50295))
    for f in ("tokenizer.json", "special_tokens_map.json", "generation_config.json"):
        assert (d / f).exists(), f


def test_loads_in_project_transformers_with_same_ids_and_logits(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, model = exported
    tok = AutoTokenizer.from_pretrained(d)
    assert type(tok).__name__ == "CodeGenTokenizer"
    ref = get_tokenizer()
    for s in SAMPLES:
        assert tok(s)["input_ids"] == ref(s)["input_ids"], s
        assert tok.decode(tok(s)["input_ids"]) == s
    loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.tensor([ref(SAMPLES[0])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_vocab_and_merges_alone_make_the_same_tokenizer(exported, tmp_path):
    """What 4.x's slow CodeGenTokenizer reads: vocab.json + merges.txt + added tokens."""
    from transformers import AutoTokenizer

    d, _ = exported
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(d / f, tmp_path / f)
    slow_files = AutoTokenizer.from_pretrained(tmp_path)
    ref = get_tokenizer()
    assert len(slow_files) == len(ref)
    for p in stdlib_files(40):
        text = p.read_text(encoding="utf-8", errors="replace")
        assert slow_files(text)["input_ids"] == ref(text)["input_ids"], p


def test_hash_runs_use_gpt2s_merges(tokenizer):
    # "##" is one GPT-2 token; a build that took "#"-led merge lines for comments split it
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert enc("##") == [2235] and len(enc("#" * 16)) == 1


def test_disagreeing_rotary_or_mlp_keys_are_refused():
    base = {"intermediate_size": 96, "rope_parameters": {"partial_rotary_factor": 0.25}}
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        phi1_compatible_config(base | {"partial_rotary_factor": 0.5})
    with pytest.raises(ValueError, match="n_inner"):
        phi1_compatible_config(base | {"n_inner": 128})
    # a 4.x-style config (top-level keys only) gains rope_parameters with the same values
    old = phi1_compatible_config({"intermediate_size": 96, "partial_rotary_factor": 0.4})
    assert old["rope_parameters"]["partial_rotary_factor"] == 0.4 == old["partial_rotary_factor"]
    assert old["n_inner"] == 96
