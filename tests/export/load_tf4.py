"""Load an exported model directory as a transformers 4.x user would; write what it saw.

Runs inside the cached transformers 4.57 venv (see ``tests/venvs.py``), so it imports nothing
from phi_ray. Usage: ``python load_tf4.py MODEL_DIR SAMPLES_JSON OUT_DIR``. Writes
``result.json`` (versions, classes, token ids, decoded text, loading info) and
``logits.npy`` / ``logits_no_top_level_rope.npy`` (the first sample's logits, the second
from a copy whose config.json lacks the top-level rotary keys).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def _logits(model_dir: Path, ids: list[int]) -> tuple[np.ndarray, dict]:
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True
    )
    with torch.no_grad():
        out = model.eval()(torch.tensor([ids])).logits[0].numpy()
    return out, {k: sorted(map(str, v)) for k, v in info.items()}


def main(model_dir: Path, samples: list[str], out: Path) -> None:
    fast = AutoTokenizer.from_pretrained(model_dir)
    slow = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    cfg = AutoConfig.from_pretrained(model_dir)
    ids = [fast(s)["input_ids"] for s in samples]
    logits, info = _logits(model_dir, ids[0])
    np.save(out / "logits.npy", logits)

    # The same directory without the top-level keys that 4.x reads: the check that
    # they matter (4.x then uses its default rotary factor, 0.5).
    bare = out / "bare"
    shutil.copytree(model_dir, bare)
    c = json.loads((bare / "config.json").read_text())
    c.pop("partial_rotary_factor"), c.pop("rope_theta")
    (bare / "config.json").write_text(json.dumps(c))
    np.save(out / "logits_no_top_level_rope.npy", _logits(bare, ids[0])[0])

    result = {
        "transformers": transformers.__version__,
        "fast_class": type(fast).__name__,
        "slow_class": type(slow).__name__,
        "vocab_size": [len(fast), len(slow)],
        "partial_rotary_factor": cfg.partial_rotary_factor,
        "rope_theta": cfg.rope_theta,
        "fast_ids": ids,
        "slow_ids": [slow(s)["input_ids"] for s in samples],
        "decoded": [fast.decode(i) for i in ids],
        # 4.x's slow decode puts a space around every added token unless told not to
        # (microsoft/phi-1's own tokenizer does the same); ids are what must agree
        "slow_decoded": [slow.decode(i, spaces_between_special_tokens=False) for i in ids],
        "loading_info": info,
    }
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
