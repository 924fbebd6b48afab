"""The transformers engine: batching must not change results; stops, seeds and streaming."""

from __future__ import annotations

import pytest
import torch

from phi_ray.config import load_config
from phi_ray.model.phi import build_model
from phi_ray.serving.engine import HFEngine, SeqSpec, _Detok, _StopMatcher


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


def _brute_force(text: str, stops: list[str]) -> tuple[int | None, int]:
    """(where the first-completed stop starts, hold-back) by re-scanning the whole text."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if text[:end].endswith(s)]
        if starts:
            return min(starts), 0
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return None, hold


def test_stop_matcher_agrees_with_brute_force_on_random_text():
    import random

    rng = random.Random(0)
    for _ in range(300):
        stops = [
            "".join(rng.choices("ab\n", k=rng.randint(1, 6))) for _ in range(rng.randint(1, 9))
        ]
        text = "".join(rng.choices("ab\nc", k=rng.randint(0, 30)))
        m, pos, found = _StopMatcher(stops), 0, None
        while pos < len(text) and found is None:  # fed in random-sized pieces
            piece = text[pos : pos + rng.randint(1, 4)]
            at = m.feed(piece)
            found = None if at is None else pos + at
            pos += len(piece)
        want, hold = _brute_force(text[:pos], stops)
        assert found == want, (stops, text)
        if found is None:
            assert m.hold == hold, (stops, text)


def test_one_pass_prompt_logprobs_padded_equal_unpadded_and_echo_only(engine):
    """Prompts of different lengths share one left-padded pass; each row's logprobs are
    what the model gives it alone (1e-4), and max_tokens 0 generates nothing."""
    specs = [
        SeqSpec(_ids(engine, p), max_tokens=m, logprobs=2, prompt_logprobs=2)
        for p, m in zip(PROMPTS[:2], (0, 1), strict=True)
    ]
    out = engine.generate(specs)
    for s, ev in zip(specs, out, strict=True):
        with torch.no_grad():
            lp = engine.model(torch.tensor([s.prompt_ids])).logits.float().log_softmax(-1)[0]
        ref = [lp[i - 1, t].item() for i, t in enumerate(s.prompt_ids) if i]
        pl = ev.prompt_logprobs
        assert pl.ids == s.prompt_ids and pl.logprobs[0] is None
        assert max(abs(a - b) for a, b in zip(pl.logprobs[1:], ref, strict=True)) < 1e-4
        assert all(len(t) == 2 and t[0][1] >= t[1][1] for t in pl.top[1:])
        assert ev.finish_reason == "length" and len(ev.logprobs.ids) == ev.n_tokens == s.max_tokens
    # The one generated token is the greedy one, with the logprob the model gives it.
    nxt = engine.model(torch.tensor([specs[1].prompt_ids])).logits[0, -1].float().log_softmax(-1)
    assert out[1].logprobs.ids == [int(nxt.argmax())]
    assert abs(out[1].logprobs.logprobs[0] - nxt.max().item()) < 1e-4


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-40])
def test_tiny_temperatures_are_greedy(engine, temperature):
    ids = _ids(engine, PROMPTS[0])
    greedy = engine.generate([SeqSpec(ids, 8)])[0].text
    assert engine.generate([SeqSpec(ids, 8, temperature=temperature, seed=1)])[0].text == greedy
