"""The transformers engine: batching must not change results; stops, seeds and streaming."""

from __future__ import annotations

import pytest
import torch

from phi_ray.config import load_config
from phi_ray.model.phi import build_model
from phi_ray.serving.engine import HFEngine, SeqSpec, _Detok


@pytest.fixture(scope="module")
def engine(tokenizer):
    # One thread, as a serving replica with one CPU has: on a busy 2-core machine extra
    # torch threads only spin against each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model(load_config("tiny").model, seed=0).eval()
    yield HFEngine(model, tokenizer, model.config.max_position_embeddings)
    torch.set_num_threads(threads)


PROMPTS = [
    "def fibonacci(n):\n    ",
    "import os\nimport sys\n\nclass Config:\n    def __init__(self, path):\n        self.path =",
    "x",
]


def _ids(engine, text):
    return engine.tokenizer.encode(text)


def test_batched_greedy_equals_one_at_a_time(engine):
    """Left padding + per-row max_tokens: a batch gives each row what it gets alone."""
    specs = [
        SeqSpec(_ids(engine, p), max_tokens=m) for p, m in zip(PROMPTS, (12, 5, 9), strict=True)
    ]
    alone = [engine.generate([s])[0] for s in specs]
    together = engine.generate(specs)
    for a, b, s in zip(alone, together, specs, strict=True):
        assert a.text == b.text and a.n_tokens == b.n_tokens == s.max_tokens
        assert b.finish_reason == "length" and b.text
    # The text is exactly the decoded tokens that a plain greedy generate produces.
    out = engine.model.generate(
        torch.tensor([specs[0].prompt_ids]), max_new_tokens=12, do_sample=False
    )
    assert together[0].text == engine.tokenizer.decode(out[0, len(specs[0].prompt_ids) :])


def test_seeded_sampling_is_reproducible_whatever_the_batch(engine):
    ids = _ids(engine, PROMPTS[0])
    s = SeqSpec(ids, 16, temperature=1.0, top_p=0.9, seed=42)
    alone = engine.generate([s])[0].text
    mixed = engine.generate([SeqSpec(_ids(engine, PROMPTS[1]), 8, temperature=0.7), s])[1].text
    assert alone == mixed
    other = engine.generate([SeqSpec(ids, 16, temperature=1.0, top_p=0.9, seed=43)])[0].text
    greedy = engine.generate([SeqSpec(ids, 16)])[0].text
    assert other != alone and greedy != alone


def test_stop_sequences_cut_and_hold_back(engine):
    ids = _ids(engine, PROMPTS[0])
    full = engine.generate([SeqSpec(ids, 24)])[0].text
    stop = full[6:9]  # something the model is known to produce (greedy is deterministic)
    deltas = []
    res = engine.generate([SeqSpec(ids, 24, stop=["\x00never", stop])], emit=deltas.extend)[0]
    assert res.text == full[: full.find(stop)] and res.finish_reason == "stop"
    assert res.n_tokens < 24
    streamed = "".join(e.text for e in deltas)
    assert streamed == res.text and stop not in streamed
    assert deltas[-1].finish_reason == "stop"


def test_detok_streams_unicode_and_releases_held_text(tokenizer):
    text = "s = 'héllo 你好 🙂'\nprint(s)\n\nend"
    ids = tokenizer.encode(text)
    d = _Detok(tokenizer, SeqSpec([1], max_tokens=len(ids), stop=["\n\nbegin"]))
    parts = [d.push(t, eos_id=50256) for t in ids]
    assert all("\ufffd" not in p for p in parts)
    assert "".join(parts) == text and d.finish == "length"
    # A tail that may still become a stop sequence is held back, then released at the end.
    tail = tokenizer.encode("print(s)\n\n")
    d = _Detok(tokenizer, SeqSpec([1], max_tokens=99, stop=["\n\nbegin"]))
    got = "".join(d.push(t, 50256) for t in tail)
    assert got == "print(s)"  # "\n\n" could be the start of "\n\nbegin"
    assert d.push(50256, 50256) == "\n\n" and d.finish == "stop"
