"""The transformers completion engine: one ``generate`` call per dynamic batch.

Requests with different settings share a batch. ``generate`` runs greedily and a logits
processor does the sampling itself, row by row, with each row's own temperature, top-p and
``torch.Generator``: a seeded request therefore gives the same text whatever it was
batched with, and nothing forces requests into per-setting groups. Prompts are left-padded
(position ids come from the attention mask). One stopping criterion per batch, called
after every step, detokenizes each row incrementally, finds stop sequences, enforces each
row's own ``max_tokens`` and hands text deltas to a callback (streaming).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria

log = logging.getLogger("phi_ray.serving")


@dataclass
class SeqSpec:
    """One sequence to generate (a request with ``n`` choices is ``n`` of these)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class SeqEvent:
    """Progress of one sequence: new text, and the finish reason once it is done."""

    seq: int  # index into the batch's list of SeqSpec
    text: str
    n_tokens: int  # completion tokens so far
    finish_reason: str | None = None  # "stop" | "length"


Emit = Callable[[list[SeqEvent]], None]


class _Detok:
    """Incremental detokenizer with stop-sequence search and hold-back (vLLM's offsets).

    A delta is released only once it is certain: never a partial UTF-8 character, and never
    a tail that could still become the start of a stop sequence.
    """

    def __init__(self, tokenizer: Any, spec: SeqSpec) -> None:
        self.tok = tokenizer
        self.stop = [s for s in spec.stop if s]
        self.max_tokens = spec.max_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # decoded so far (stop sequence and later text cut off once found)
        self.emitted = 0  # chars of self.text already handed out
        self.finish: str | None = None

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token: int, eos_id: int) -> str:
        """Add one token; return the text that is now safe to emit."""
        if token == eos_id:
            self.finish = "stop"
            return self._flush()
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new = self._decode(self.ids[self.prefix_offset :])
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            start = len(self.text)
            self.text += new[len(prefix) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self._cut_at_stop(start):
                return self._flush()
        if len(self.ids) >= self.max_tokens:
            self.finish = "length"
            return self._flush()
        return self._release()

    def _cut_at_stop(self, start: int) -> bool:
        if not self.stop:
            return False
        lo = max(0, start - max(len(s) for s in self.stop) + 1)
        hits = [i for s in self.stop if (i := self.text.find(s, lo)) >= 0]
        if not hits:
            return False
        self.text = self.text[: min(hits)]
        self.finish = "stop"
        return True

    def _release(self) -> str:
        hold = 0
        for s in self.stop:  # longest suffix of text that is a proper prefix of a stop
            for k in range(min(len(s) - 1, len(self.text)), hold, -1):
                if self.text.endswith(s[:k]):
                    hold = k
                    break
        end = max(self.emitted, len(self.text) - hold)
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def _flush(self) -> str:
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out


class _RowSampler(LogitsProcessor):
    """Per-row sampling inside a greedy ``generate``: the chosen token becomes the argmax."""

    def __init__(self, specs: list[SeqSpec], device: torch.device) -> None:
        self.rows = [i for i, s in enumerate(specs) if s.temperature > 0]
        self.temps = torch.tensor([specs[i].temperature for i in self.rows], device=device)
        self.top_p = torch.tensor([specs[i].top_p for i in self.rows], device=device)
        self.gens = []
        for i in self.rows:
            g = torch.Generator(device=device)
            seed = specs[i].seed
            g.manual_seed(secrets.randbits(63) if seed is None else seed)
            self.gens.append(g)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return scores
        logits = scores[self.rows] / self.temps[:, None]  # (r, vocab)
        if bool((self.top_p < 1).any()):
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            probs = sorted_logits.softmax(-1)
            # Drop a token once the mass before it already exceeds top_p (the top one stays).
            drop = (probs.cumsum(-1) - probs) > self.top_p[:, None]
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(-1)
        out = scores.clone()
        for k, row in enumerate(self.rows):
            tok = torch.multinomial(probs[k], 1, generator=self.gens[k])
            out[row] = float("-inf")
            out[row, tok] = 0.0
        return out


class _RowStopper(StoppingCriteria):
    """Detokenizes each row's new token, finishes rows, and streams deltas through ``emit``."""

    def __init__(self, tokenizer: Any, specs: list[SeqSpec], eos_id: int, emit: Emit | None):
        self.detoks = [_Detok(tokenizer, s) for s in specs]
        self.eos_id = eos_id
        self.emit = emit

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        done = []
        events = []
        for i, (d, tok) in enumerate(zip(self.detoks, last, strict=True)):
            if d.finish is None:
                text = d.push(tok, self.eos_id)
                if text or d.finish is not None:
                    events.append(SeqEvent(i, text, len(d.ids), d.finish))
            done.append(d.finish is not None)
        if self.emit is not None and events:
            self.emit(events)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFEngine:
    """Batched generation with a Hugging Face causal LM (CPU or one GPU)."""

    continuous = False  # requests join at batch boundaries (``@serve.batch``), not per step

    def __init__(self, model: Any, tokenizer: Any, max_context: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.eos_id = tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self._lock = threading.Lock()  # one generate at a time per replica

    @classmethod
    def load(cls, model_dir: str, device: str = "cpu", dtype: Any = None) -> HFEngine:
        """Load a Hugging Face-format directory (as pretrain / finetune write it)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype or torch.float32)
        model.to(device).eval()
        return cls(model, tok, int(model.config.max_position_embeddings))

    @torch.inference_mode()
    def generate(self, specs: list[SeqSpec], emit: Emit | None = None) -> list[SeqEvent]:
        """Generate every sequence in one batch; return one final event per sequence.

        ``emit`` (called from this thread after every step) receives the text deltas.
        The returned events carry the whole completion text.
        """
        width = max(len(s.prompt_ids) for s in specs)
        ids = torch.full((len(specs), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(specs), width), dtype=torch.long)
        for i, s in enumerate(specs):  # left padding: every row's last token is aligned
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids) :] = 1
        stopper = _RowStopper(self.tokenizer, specs, self.eos_id, emit)
        with self._lock:
            self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max(s.max_tokens for s in specs),
                do_sample=False,
                logits_processor=LogitsProcessorList([_RowSampler(specs, self.device)]),
                stopping_criteria=[stopper],
                eos_token_id=self.eos_id,
                pad_token_id=self.eos_id,
            )
        out = []
        for i, d in enumerate(stopper.detoks):
            finish = d.finish or "length"
            if d.finish is None:  # generate hit max_new_tokens before the row said so
                d._flush()
            out.append(SeqEvent(i, d.text, len(d.ids), finish))
        return out
