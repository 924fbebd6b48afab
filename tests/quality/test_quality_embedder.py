"""Embedder and QualityClassifier API: the contract serving and decontamination code against."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import stdlib_python_files
from sklearn.ensemble import RandomForestClassifier

from phi_ray.config import EmbedderConfig
from phi_ray.quality.classifier import EmbedderMismatchError, QualityClassifier, build_meta
from phi_ray.quality.embed import Embedder

MAX_LEN = 64


def _cfg(**kw) -> EmbedderConfig:
    base = dict(model="tiny-codegen", max_length=MAX_LEN, batch_size=4, tiny_hidden=32)
    return EmbedderConfig(**(base | kw))


@pytest.fixture(scope="module")
def embedder():
    return Embedder(_cfg(), seed=7)


@pytest.fixture(scope="module")
def texts():
    return [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_python_files(24)]


def test_embed_shape_order_and_determinism(embedder, texts):
    X = embedder.embed(texts)
    assert X.shape == (len(texts), embedder.dim) and X.dtype == np.float32
    assert embedder.dim == 32 and np.isfinite(X).all()
    # Length-sorted batching must not change what each row gets, nor its place.
    single = np.stack([embedder.embed([t])[0] for t in texts[:5]])
    np.testing.assert_allclose(single, X[:5], rtol=1e-4, atol=1e-5)
    # Same seed, same weights; another seed, another identity.
    again = Embedder(_cfg(), seed=7)
    np.testing.assert_array_equal(again.embed(texts[:3]), X[:3])
    assert again.identity() == embedder.identity()
    assert Embedder(_cfg(), seed=8).identity()["weights"] != embedder.identity()["weights"]


def test_empty_input_and_empty_text(embedder):
    assert embedder.embed([]).shape == (0, embedder.dim)
    X = embedder.embed(["", "   ", "x = 1\n"])
    assert np.isfinite(X).all()
    # Documented: a text with no tokens is embedded as the lone <|endoftext|> token.
    np.testing.assert_allclose(X[0], embedder.embed_tokens([[embedder.eos_id]])[0], atol=1e-6)


def test_truncation_keeps_the_head(embedder, texts):
    long = max(texts, key=len) * 3  # far beyond the 8x / 66x character cuts
    full = embedder.tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(full) > MAX_LEN
    ids = embedder.tokenize([long])[0]
    assert ids == full[:MAX_LEN]
    # So a long file embeds exactly as its first max_length tokens do.
    head = embedder.tokenizer.decode(full[:MAX_LEN])
    tail_changed = head + "\n# anything after the head is ignored\n" * 50
    np.testing.assert_allclose(
        embedder.embed([long])[0], embedder.embed([tail_changed])[0], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("pooling", ["last", "max"])
def test_other_poolings(pooling, texts):
    e = Embedder(_cfg(pooling=pooling), seed=7)
    X = e.embed(texts[:4])
    assert X.shape == (4, 32) and np.isfinite(X).all()


def test_classifier_roundtrip_and_mismatch(embedder, texts, tmp_path):
    X = embedder.embed(texts)
    y = np.array(['"""' in t for t in texts])
    forest = RandomForestClassifier(n_estimators=10, random_state=0).fit(X, y)
    clf = QualityClassifier(forest, build_meta(embedder, threshold=0.5), embedder)
    probs, kept = clf.score(texts)
    clf.save(str(tmp_path / "clf"))

    loaded = QualityClassifier.load(str(tmp_path / "clf"))  # rebuilds the tiny embedder
    p2, k2 = loaded.score(texts)
    np.testing.assert_allclose(p2, probs, atol=1e-6)
    assert (k2 == (p2 >= 0.5)).all() and (k2 == kept).all() and loaded.threshold == 0.5
    assert loaded.meta["embedder"]["model"] == "tiny-codegen"
    empty_p, empty_k = loaded.score([])
    assert empty_p.shape == (0,) and empty_k.shape == (0,)

    with pytest.raises(EmbedderMismatchError, match="pooling: trained with 'mean', given 'max'"):
        QualityClassifier.load(
            str(tmp_path / "clf"), embedder=Embedder(_cfg(pooling="max"), seed=7)
        )
    with pytest.raises(EmbedderMismatchError, match="seed: trained with 7, given 8"):
        QualityClassifier.load(str(tmp_path / "clf"), embedder=Embedder(_cfg(), seed=8))
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        QualityClassifier.load(str(tmp_path / "nowhere"))


def test_sdpa_attention_equals_transformers_eager_codegen_attention(texts):
    """The SDPA path against transformers' own fp32-score CodeGen attention, with padding."""
    sdpa = Embedder(_cfg(tiny_hidden=64, tiny_heads=8), seed=3)
    eager = Embedder(_cfg(tiny_hidden=64, tiny_heads=8, attn_implementation="eager"), seed=3)
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert eager.model.config._attn_implementation == "eager"
    assert sdpa.identity() == eager.identity()  # the same vectors: classifiers stay valid
    rows = sdpa.tokenize([*texts[:12], "x = 1", "", "def f():\n    return 2\n"])
    a, b = sdpa.embed_tokens(rows), eager.embed_tokens(rows)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_batches_by_token_budget():
    from phi_ray.quality.embed import token_batches

    lengths = [5, 64, 3, 64, 10, 1, 1, 1, 200, 7]
    batches = token_batches(lengths, budget=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * width <= 64, b  # an oversize row rides alone
    assert batches[0] == [8]  # longest first
    assert any(len(b) >= 6 for b in batches)  # short rows share one batch
    # batching changes nothing in the vectors
    e = Embedder(_cfg(batch_tokens=16), seed=7)
    rows = [[1, 2, 3], [4] * 40, [5, 6], [7] * 9, [8]]
    one = np.stack([e.embed_tokens([r])[0] for r in rows])
    np.testing.assert_allclose(e.embed_tokens(rows), one, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_sdpa_bf16_on_gpu_matches_eager_fp32(texts):
    """On a GPU the embedder runs SDPA in bf16; its vectors match the fp32 eager reference."""
    gpu = Embedder(_cfg(tiny_hidden=256, tiny_heads=8, max_length=512), device="cuda", seed=3)
    ref = Embedder(_cfg(tiny_hidden=256, tiny_heads=8, max_length=512, attn_implementation="eager"), seed=3)  # fmt: skip
    assert gpu.model.dtype == torch.bfloat16 and gpu.model.config._attn_implementation == "sdpa"
    rows = gpu.tokenize(texts)
    a, b = gpu.embed_tokens(rows), ref.embed_tokens(rows)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.999, cos.min()


def test_codegen_gelu_runs_as_one_kernel_with_the_same_vectors(texts, tmp_path):
    """CodeGen's gelu_new (eight elementwise passes) becomes gelu_pytorch_tanh (one kernel,
    the same function), for the tiny model and for a pretrained directory alike."""
    from transformers.activations import ACT2FN

    from phi_ray.model.tokenizer import save_tokenizer

    fused = Embedder(_cfg(tiny_hidden=64, tiny_heads=8), seed=3)
    assert fused.model.config.activation_function == "gelu_pytorch_tanh"
    unfused = Embedder(_cfg(tiny_hidden=64, tiny_heads=8), seed=3)
    for block in unfused.model.h:
        block.mlp.act = ACT2FN["gelu_new"]
    rows = fused.tokenize(texts[:12])
    want = unfused.embed_tokens(rows)
    np.testing.assert_allclose(fused.embed_tokens(rows), want, rtol=1e-5, atol=1e-6)
    # a checkpoint whose config says gelu_new (as codegen-350M-mono's does) loads fused
    unfused.model.config.activation_function = "gelu_new"
    unfused.model.save_pretrained(tmp_path)
    save_tokenizer(unfused.tokenizer, str(tmp_path))
    loaded = Embedder(_cfg(model=str(tmp_path)), seed=3)
    assert loaded.model.config.activation_function == "gelu_pytorch_tanh"
    np.testing.assert_allclose(loaded.embed_tokens(rows), want, rtol=1e-5, atol=1e-6)
