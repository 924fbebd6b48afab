"""MFU's peak table and attention convention."""

from __future__ import annotations

import pytest

from phi_ray.train.metrics import flops_per_token, table_peak


@pytest.mark.parametrize(
    "name,tflops",
    [
        ("NVIDIA H100 NVL", 835.0),  # not the SXM's 989
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA L40", 181.0),  # not the L4's 121 ("L4" is a substring of "L40")
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A100-SXM4-40GB", 312.0),
    ],
)
def test_peak_table(name, tflops):
    peak, src = table_peak(name, "bf16")
    assert peak == tflops * 1e12, src


def test_attention_convention_full_vs_causal():
    full = flops_per_token(1000, 2, 4, 16, 128)
    causal = flops_per_token(1000, 2, 4, 16, 128, causal=True)
    assert full == 6000 + 12 * 2 * 4 * 16 * 128 and causal == 6000 + 6 * 2 * 4 * 16 * 128
