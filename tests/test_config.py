import pytest

from phi_ray.config import Config, ConfigError, list_presets, load_config


def test_presets_load():
    assert {"tiny", "phi1", "phi1-small"} <= set(list_presets())
    for p in ("tiny", "phi1", "phi1-small"):
        assert isinstance(load_config(p), Config)


def test_phi1_carries_the_papers_numbers():
    c = load_config("phi1")
    m = c.model
    assert (m.n_layer, m.hidden_size, m.intermediate_size, m.n_head, m.rotary_dim) == (
        24,
        2048,
        8192,
        32,
        32,
    )
    assert c.pack.seq_len == 2048
    assert m.attention_dropout == m.resid_dropout == 0.1
    p = c.pretrain
    assert (p.global_batch, p.lr, p.warmup_steps, p.weight_decay, p.max_steps, p.precision) == (
        1024,
        1e-3,
        750,
        0.1,
        36000,
        "fp16",
    )
    f = c.finetune
    assert (f.global_batch, f.lr, f.warmup_steps, f.weight_decay, f.max_steps) == (
        256,
        1e-4,
        50,
        0.01,
        6000,
    )
    assert f.checkpoint_every == 1000 and f.keep_best
    assert c.annotate.sample_size == 100_000


def test_phi1_small_extends_phi1():
    c = load_config("phi1-small")
    m = c.model
    assert (m.n_layer, m.hidden_size, m.intermediate_size, m.n_head) == (20, 1024, 4096, 16)
    assert c.pretrain.lr == 1e-3 and c.finetune.global_batch == 256  # inherited


def test_overrides_and_types():
    c = load_config("tiny", ["pretrain.lr=0.01", "model.n_layer=3", "corpus.dedup.near=false"])
    assert c.pretrain.lr == 0.01 and c.model.n_layer == 3 and c.corpus.dedup.near is False
    # a partial nested section keeps the section's own defaults
    assert c.finetune.keep_best is True


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.bogus=1", "unknown key model.bogus"),
        ("nosuch.key=1", "unknown key nosuch"),
        ("pretrain.lr=-1", "pretrain.lr: must be > 0"),
        ("pretrain.lr=abc", "pretrain.lr: expected a number"),
        ("model.n_layer=2.5", "model.n_layer: expected an integer"),
        ("pack.seq_len=4096", "pack.seq_len: 4096 exceeds the model's context"),
        ("pretrain.precision=fp8", "pretrain.precision: must be one of"),
        ("corpus.sources=[{kind: local_dir}]", "corpus.sources[0].path: required"),
    ],
)
def test_bad_values_name_key_and_file(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    msg = str(e.value)
    assert needle in msg and "tiny.yaml" in msg and "\n" not in msg


def test_bad_preset_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key model.n_layers"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nope")


def test_section_hash_is_stable_and_sensitive():
    a, b = load_config("tiny"), load_config("tiny")
    assert a.section_hash("corpus") == b.section_hash("corpus")
    c = load_config("tiny", ["corpus.filters.min_chars=5"])
    assert a.section_hash("corpus") != c.section_hash("corpus")
    assert a.section_hash("model") == c.section_hash("model")


def test_float_keys_accept_yaml11_exponents():
    # PyYAML reads 2.0e6 (no sign in the exponent) as a string
    c = load_config("tiny", ["estimate.corpus_tokens=2.0e6", "pretrain.lr=3e-4"])
    assert c.estimate.corpus_tokens == 2e6 and c.pretrain.lr == 3e-4
    with pytest.raises(ConfigError, match="expected a number"):
        load_config("tiny", ["pretrain.lr=fast"])
