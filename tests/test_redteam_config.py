"""Red-team config values that load but would hang or crash a stage later."""

from __future__ import annotations

import pytest

from phi_ray.config import ConfigError, load_config, load_yaml


@pytest.mark.parametrize(
    "item",
    [
        "serve.batch_wait_timeout_s=inf",  # Serve would wait forever for a full batch
        "serve.batch_wait_max_s=Infinity",
        "llm.timeout_s=inf",
        "llm.budget_usd=inf",
        "evaluate.top_p=-inf",
        "run.seed=-1",  # numpy / scikit-learn refuse it at the first draw, mid-stage
        f"run.seed={2**64}",  # torch.manual_seed overflows
    ],
)
def test_values_that_would_fail_a_stage_later_are_config_errors(item):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [item])
    assert item.split("=")[0] in str(e.value)


def test_non_finite_floats_from_a_preset_file_are_refused(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("extends: tiny\nserve:\n  batch_wait_timeout_s: .inf\n")
    with pytest.raises(ConfigError, match="batch_wait_timeout_s"):
        load_config(str(p))
    assert load_yaml("x: .nan", "t")["x"] != 0  # YAML itself still reads them


def test_ordinary_seeds_and_floats_still_load():
    cfg = load_config("tiny", ["run.seed=0", "serve.batch_wait_timeout_s=0", "llm.timeout_s=1e3"])
    assert cfg.run.seed == 0 and cfg.llm.timeout_s == 1000.0


@pytest.mark.parametrize(
    "item",
    [
        "llm.prices={gpt-4: {input: -5, output: 60}}",  # a negative cost refunds the budget
        "llm.prices={gpt-4: {input: 30, outptu: 60}}",  # a typo: output tokens cost $0
        "llm.prices={my-model: {input: 30}}",  # (gpt-4 would keep its default output)
        "llm.max_tokens=-1",  # a negative worst case reserved per call
        "llm.max_tokens=0",
    ],
)
def test_llm_settings_that_would_let_a_budget_overshoot_are_config_errors(item):
    with pytest.raises(ConfigError, match=r"llm\.(prices|max_tokens)"):
        load_config("tiny", [item, "llm.budget_usd=10"])
