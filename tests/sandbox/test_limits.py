"""Limits that would overflow setrlimit (or mean nothing) are refused up front, in the
config and in the sandbox, instead of silently failing every sample."""

from __future__ import annotations

import pytest

from phi_ray.config import ConfigError, load_config
from phi_ray.sandbox import Limits

BAD = [
    ("evaluate.timeout_s", ".inf"),
    ("evaluate.timeout_s", ".nan"),
    ("evaluate.timeout_s", "-1"),
    ("evaluate.timeout_s", "0"),
    ("evaluate.memory_mb", "10000000000000"),
    ("evaluate.memory_mb", "-5"),
    ("evaluate.memory_mb", "32"),
    ("evaluate.max_procs", "0"),
    ("evaluate.max_procs", "10000000000000"),
    ("evaluate.max_file_mb", "10000000000000"),
    ("synth.exec_timeout_s", ".inf"),
    ("synth.exec_timeout_s", "-0.5"),
    ("synth.exec_memory_mb", "10000000000000"),
    ("synth.exec_memory_mb", "-1"),
]


@pytest.mark.parametrize(("key", "value"), BAD)
def test_config_rejects_bad_limits(key, value):
    with pytest.raises(ConfigError, match=key.split(".")[1]):
        load_config("tiny", [f"{key}={value}"])


def test_config_accepts_sane_limits_and_allow_weak():
    cfg = load_config(
        "tiny",
        [
            "evaluate.timeout_s=2.5",
            "evaluate.memory_mb=512",
            "evaluate.allow_weak_sandbox=true",
            "synth.exec_memory_mb=256",
            "synth.allow_weak_sandbox=true",
        ],
    )
    assert cfg.evaluate.allow_weak_sandbox and cfg.synth.allow_weak_sandbox
    assert cfg.evaluate.timeout_s == 2.5


@pytest.mark.parametrize(
    "kw",
    [
        {"timeout_s": float("inf")},
        {"timeout_s": float("nan")},
        {"memory_mb": 10**13},
        {"memory_mb": 1.5},
        {"max_procs": -1},
        {"max_file_mb": True},
    ],
)
def test_limits_reject_bad_values(kw):
    with pytest.raises(ValueError):
        Limits(**kw)
