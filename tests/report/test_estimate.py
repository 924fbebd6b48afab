import pytest

from phi_ray.config import ConfigError, load_config
from phi_ray.report.estimate import estimate, model_parameters


def test_phi1_estimate_follows_its_formulas():
    cfg = load_config("phi1", ["llm.base_url=http://127.0.0.1:1/v1"])
    lines = {ln.item: ln for ln in estimate(cfg)}
    assert set(lines) == {
        "annotate",
        "synth textbooks",
        "synth exercises",
        "score",
        "pretrain",
        "finetune",
    }
    n = model_parameters(cfg)
    assert 1.3e9 < n < 1.5e9  # phi-1: 1.3B non-embedding-ish, 1.42B with both embeddings
    p = lines["pretrain"]
    tokens = 36_000 * 1024 * 2048
    flops = tokens * (6 * n + 12 * 24 * 2048 * 2048)
    assert p.tokens == tokens
    assert p.gpu_hours == pytest.approx(flops / (312e12 * 0.5) / 3600)
    assert p.usd == pytest.approx(p.gpu_hours * 4.1)
    # the paper's 770 A100-hours for ~51B tokens is the same order as ours for 75B
    assert 700 < p.gpu_hours < 2000
    a = lines["annotate"]
    assert a.usd == pytest.approx(100_000 * (650 * 30 + 40 * 60) / 1e6)
    assert lines["score"].gpu_hours == pytest.approx(35e9 / 2e9)


def test_offline_preset_has_no_llm_cost_and_prices_are_checked():
    cfg = load_config("tiny")
    items = [ln.item for ln in estimate(cfg)]
    assert items == ["score", "pretrain", "finetune"]
    # Under a dollar budget an unpriced model is refused when the config loads...
    with pytest.raises(ConfigError, match="model 'nope' has no price"):
        load_config("phi1", ["llm.base_url=http://x/v1", "annotate.model=nope"])
    # ...and without one, estimate still refuses to price it.
    bad = load_config(
        "phi1", ["llm.base_url=http://x/v1", "annotate.model=nope", "llm.budget_usd=null"]
    )
    with pytest.raises(ValueError, match="no price for model 'nope'"):
        estimate(bad)


def test_measured_corpus_tokens_win():
    cfg = load_config("tiny")
    lines = {ln.item: ln for ln in estimate(cfg, corpus_tokens=4e9)}
    assert lines["score"].gpu_hours == pytest.approx(2.0)
