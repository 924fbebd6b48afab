"""GPU path of the embedder: bf16 on CUDA, same identity and (nearly) same vectors as CPU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import stdlib_python_files

from phi_ray.config import EmbedderConfig
from phi_ray.quality.embed import Embedder


@pytest.mark.gpu
def test_bf16_gpu_embeddings_match_fp32_cpu():
    import torch

    cfg = EmbedderConfig(model="tiny-codegen", max_length=128, batch_size=8)
    texts = [p.read_text(errors="replace") for p in stdlib_python_files(16)]
    cpu, gpu = Embedder(cfg, "cpu", seed=3), Embedder(cfg, "cuda", seed=3)
    assert gpu.dtype == torch.bfloat16 and cpu.dtype == torch.float32
    # A classifier trained on one loads with the other: the identity ignores precision.
    assert gpu.identity() == cpu.identity()
    a, b = cpu.embed(texts), gpu.embed(texts)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.99
