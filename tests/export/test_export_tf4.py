"""The exported directory under transformers 4.57 (a cached venv, in a subprocess) and under
the project's transformers 5.x (in-process): the same token ids and the same logits.

Slow on first use (the venv is built: about two minutes of pip), so it runs with
``make check-compat`` (``PHI_RAY_COMPAT=1``), not in the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from export_model import SAMPLES, export_tiny, stdlib_files
from venvs import cached_venv

pytestmark = pytest.mark.skipif(
    not os.environ.get("PHI_RAY_COMPAT"),
    reason="builds a transformers 4.57 venv: make check-compat",
)

TF4 = ["transformers==4.57.*", "numpy"]


def test_export_loads_identically_in_transformers_4_57_and_5(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    python = cached_venv("tf457", TF4, borrow_torch=True)
    model_dir, model = export_tiny(tmp_path / "model")
    samples = SAMPLES + [
        p.read_text(encoding="utf-8", errors="replace")[:4000] for p in stdlib_files(30)
    ]
    (tmp_path / "samples.json").write_text(json.dumps(samples))
    out = tmp_path / "tf4"
    out.mkdir()
    proc = subprocess.run(
        [str(python), str(Path(__file__).with_name("load_tf4.py")), str(model_dir),
         str(tmp_path / "samples.json"), str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads((out / "result.json").read_text())
    assert r["transformers"].startswith("4.57.")
    assert r["fast_class"] == "CodeGenTokenizerFast" and r["slow_class"] == "CodeGenTokenizer"
    assert r["vocab_size"] == [50295, 50295]
    assert (r["partial_rotary_factor"], r["rope_theta"]) == (0.25, 10000.0)
    assert not any(r["loading_info"].values()), r["loading_info"]  # no missing/unexpected

    tok5 = AutoTokenizer.from_pretrained(model_dir)
    ids5 = [tok5(s)["input_ids"] for s in samples]
    assert r["fast_ids"] == ids5
    assert r["slow_ids"] == ids5
    assert r["decoded"] == r["slow_decoded"] == samples

    model5 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits5 = model5(torch.tensor([ids5[0]])).logits[0].numpy()
        trained = model(torch.tensor([ids5[0]])).logits[0].numpy()
    logits4 = np.load(out / "logits.npy")
    np.testing.assert_allclose(logits4, logits5, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits5, trained, rtol=1e-5, atol=1e-5)
    # without the top-level rotary keys 4.x would run another model, silently
    bare = np.load(out / "logits_no_top_level_rope.npy")
    assert np.abs(bare - logits5).max() > 1e-3
