"""The transformers completion engine: one ``generate`` call per dynamic batch.

Requests with different settings share a batch. ``generate`` runs greedily and a logits
processor does the sampling itself (and records log-probabilities when asked), row by row, with each row's own temperature, top-p and
``torch.Generator``: a seeded request therefore gives the same text whatever it was
batched with, and nothing forces requests into per-setting groups. Prompts are left-padded
(position ids come from the attention mask). One stopping criterion per batch, called
after every step, detokenizes each row incrementally, finds stop sequences, enforces each
row's own ``max_tokens`` and hands text deltas to a callback (streaming).
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria

log = logging.getLogger("phi_ray.serving")


GREEDY_BELOW = 1e-5  # temperatures under this are greedy (vLLM's _SAMPLING_EPS): 1e-300 would
# overflow logits / t to inf in float32, and softmax of inf is NaN


@dataclass
class SeqSpec:
    """One sequence to generate (a request with ``n`` choices is ``n`` of these)."""

    prompt_ids: list[int]
    max_tokens: int  # 0: no completion (echo with prompt logprobs only)
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # top-k log-probabilities of each completion token
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo)


@dataclass
class TokenLogprobs:
    """Log-probabilities of a run of tokens under the model's raw distribution.

    ``logprobs[i]`` is log p(ids[i] | everything before it) (None for a prompt's first
    token, which has no context); ``top[i]`` the ``k`` most likely (id, logprob) there.
    """

    ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top: list[list[tuple[int, float]] | None] = field(default_factory=list)

    def extend(self, other: TokenLogprobs) -> None:
        self.ids += other.ids
        self.logprobs += other.logprobs
        self.top += other.top

    def slice(self, a: int, b: int) -> TokenLogprobs:
        return TokenLogprobs(self.ids[a:b], self.logprobs[a:b], self.top[a:b])


@dataclass
class SeqEvent:
    """Progress of one sequence: new text, and the finish reason once it is done."""

    seq: int  # index into the batch's list of SeqSpec
    text: str
    n_tokens: int  # completion tokens so far
    finish_reason: str | None = None  # "stop" | "length"
    logprobs: TokenLogprobs | None = None  # of the tokens since the sequence's last event
    prompt_logprobs: TokenLogprobs | None = None  # on the sequence's first event only


Emit = Callable[[list[SeqEvent]], None]


def merge_events(n: int, events: Iterable[SeqEvent]) -> list[SeqEvent]:
    """Fold a stream of events for ``n`` sequences into one event per sequence."""
    out = [SeqEvent(i, "", 0) for i in range(n)]
    for ev in events:
        o = out[ev.seq]
        o.text += ev.text
        o.n_tokens, o.finish_reason = ev.n_tokens, ev.finish_reason or o.finish_reason
        if ev.logprobs is not None:
            o.logprobs = o.logprobs or TokenLogprobs()
            o.logprobs.extend(ev.logprobs)
        o.prompt_logprobs = ev.prompt_logprobs or o.prompt_logprobs
    return out


class _StopAutomaton:
    """Aho-Corasick over a request's stop strings: built once, shared by its sequences.

    A state is a node of the stops' trie: the longest tail of the text read so far that is
    a prefix of some stop. Its depth is therefore exactly the text to hold back, and
    ``out`` says whether (the longest) stop ends there. Each character costs amortised
    O(1) whatever the number of stops; memory is the stops' total length.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.goto: list[dict[str, int]] = [{}]
        self.fail, self.depth, self.out = [0], [0], [0]
        for stop in stops:
            node = 0
            for ch in stop:
                if (nxt := self.goto[node].get(ch)) is None:
                    nxt = len(self.goto)
                    self.goto.append({})
                    self.fail.append(0)
                    self.depth.append(self.depth[node] + 1)
                    self.out.append(0)
                    self.goto[node][ch] = nxt
                node = nxt
            self.out[node] = len(stop)
        queue = deque(self.goto[0].values())  # breadth first: a node's fail is shallower
        while queue:
            u = queue.popleft()
            for ch, v in self.goto[u].items():
                f = self.fail[u]
                while f and ch not in self.goto[f]:
                    f = self.fail[f]
                self.fail[v] = self.goto[f].get(ch, 0)
                # The longest stop that ends here, itself or through a shorter suffix.
                self.out[v] = max(self.out[v], self.out[self.fail[v]])
                queue.append(v)

    def step(self, q: int, ch: str) -> int:
        while q and ch not in self.goto[q]:
            q = self.fail[q]
        return self.goto[q].get(ch, 0)


@functools.lru_cache(maxsize=64)
def _automaton(stops: tuple[str, ...]) -> _StopAutomaton:
    return _StopAutomaton(stops)


class _StopMatcher:
    """Finds stop strings in text that arrives piece by piece (see :class:`_StopAutomaton`)."""

    def __init__(self, stops: list[str]) -> None:
        stops = [s for s in stops if s]
        self.ac = _automaton(tuple(stops)) if stops else None
        self.state = 0

    def feed(self, text: str) -> int | None:
        """Consume ``text``; at the first character that completes a stop, return where
        that stop starts, relative to ``text`` (negative: it began in earlier text)."""
        if self.ac is None:
            return None
        q, ac = self.state, self.ac
        for j, ch in enumerate(text):
            q = ac.step(q, ch)
            if ac.out[q]:
                self.state = q
                return j + 1 - ac.out[q]
        self.state = q
        return None

    @property
    def hold(self) -> int:
        """Length of the longest tail of the text that a stop may still complete."""
        return self.ac.depth[self.state] if self.ac is not None else 0


class _Detok:
    """Incremental detokenizer with stop-sequence search and hold-back (vLLM's offsets).

    A delta is released only once it is certain: never a partial UTF-8 character, and never
    a tail that could still become the start of a stop sequence.
    """

    def __init__(self, tokenizer: Any, spec: SeqSpec) -> None:
        self.tok = tokenizer
        self.stops = _StopMatcher(spec.stop)
        self.max_tokens = spec.max_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""  # decoded so far (stop sequence and later text cut off once found)
        self.emitted = 0  # chars of self.text already handed out
        self.finish: str | None = None
        self.eos = 0  # 1 once the EOS token came: it has no text, but it was generated
        if self.max_tokens <= 0:
            self.finish = "length"

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token: int, eos_id: int) -> str:
        """Add one token; return the text that is now safe to emit."""
        if token == eos_id:
            self.finish = "stop"
            self.eos = 1
            return self._flush()
        self.ids.append(token)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new = self._decode(self.ids[self.prefix_offset :])
        if len(new) > len(prefix) and not new.endswith("\ufffd"):
            delta = new[len(prefix) :]
            start = len(self.text)
            self.text += delta
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            at = self.stops.feed(delta)
            if at is not None:
                self.text = self.text[: start + at]
                self.finish = "stop"
                return self._flush()
        if len(self.ids) >= self.max_tokens:
            self.finish = "length"
            return self._flush()
        return self._release()

    def _release(self) -> str:
        end = max(self.emitted, len(self.text) - self.stops.hold)
        out, self.emitted = self.text[self.emitted : end], end
        return out

    def _flush(self) -> str:
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out


def _top(lp: torch.Tensor, targets: torch.Tensor, ks: list[int]) -> TokenLogprobs:
    """Log-probs (rows, vocab) -> each row's target logprob and its top ``ks[row]``."""
    chosen = lp.gather(-1, targets[:, None])[:, 0].tolist()
    k = max(ks, default=0)
    top: list[list[tuple[int, float]] | None] = [[] for _ in ks]
    if k:
        vals, idx = lp.topk(k, dim=-1)
        top = [
            list(zip(i[:kk], v[:kk], strict=True))
            for i, v, kk in zip(idx.tolist(), vals.tolist(), ks, strict=True)
        ]
    return TokenLogprobs(targets.tolist(), chosen, top)


class _Sampler:
    """Chooses each row's next token from raw logits and records its log-probability.

    Sampling is row by row, each row with its own temperature, top-p and generator, so a
    seeded row gives the same tokens whatever it is batched with. Log-probabilities are of
    the model's raw distribution (before temperature and top-p), as vLLM reports them.
    """

    def __init__(self, specs: list[SeqSpec], device: torch.device) -> None:
        self.rows = [i for i, s in enumerate(specs) if s.temperature >= GREEDY_BELOW]
        self.temps = torch.tensor([specs[i].temperature for i in self.rows], device=device)
        self.top_p = torch.tensor([specs[i].top_p for i in self.rows], device=device)
        self.gens = []
        for i in self.rows:
            g = torch.Generator(device=device)
            seed = specs[i].seed
            g.manual_seed(secrets.randbits(63) if seed is None else seed)
            self.gens.append(g)
        self.want = [i for i, s in enumerate(specs) if s.logprobs is not None]
        self.ks = [specs[i].logprobs or 0 for i in self.want]
        self.records = [TokenLogprobs() for _ in specs]  # one entry per step, every row

    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """(rows, vocab) float logits -> (rows,) chosen token ids."""
        tokens = scores.argmax(-1)
        if self.rows:
            logits = scores[self.rows] / self.temps[:, None]  # (r, vocab)
            if bool((self.top_p < 1).any()):
                sorted_logits, order = logits.sort(dim=-1, descending=True)
                probs = sorted_logits.softmax(-1)
                # Drop a token once the mass before it already exceeds top_p (the top one stays).
                drop = (probs.cumsum(-1) - probs) > self.top_p[:, None]
                sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
                logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
            probs = logits.softmax(-1)
            for k, row in enumerate(self.rows):
                tokens[row] = torch.multinomial(probs[k], 1, generator=self.gens[k])[0]
        if self.want:
            lp = scores[self.want].float().log_softmax(-1)
            got = _top(lp, tokens[self.want], self.ks)
            for j, row in enumerate(self.want):
                self.records[row].extend(got.slice(j, j + 1))
        return tokens


class _RowSampler(LogitsProcessor):
    """:class:`_Sampler` inside a greedy ``generate``: the chosen token becomes the argmax."""

    def __init__(self, sampler: _Sampler) -> None:
        self.sampler = sampler

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.sampler.rows and not self.sampler.want:
            return scores
        tokens = self.sampler.choose(scores)
        return torch.full_like(scores, float("-inf")).scatter(-1, tokens[:, None], 0.0)


class _RowStopper(StoppingCriteria):
    """Detokenizes each row's new token, finishes rows, and streams deltas through ``emit``.

    ``index`` maps a row to its sequence number in the caller's batch; each event carries
    the log-probabilities of the row's tokens since its previous event (when asked for).
    """

    def __init__(
        self, tokenizer: Any, specs: list[SeqSpec], eos_id: int, emit: Emit,
        sampler: _Sampler, index: list[int],
    ) -> None:  # fmt: skip
        self.specs, self.detoks = specs, [_Detok(tokenizer, s) for s in specs]
        self.eos_id, self.emit, self.sampler, self.index = eos_id, emit, sampler, index
        self.sent = [0] * len(specs)

    def step(self, tokens: list[int]) -> list[bool]:
        """Push each unfinished row's next token; emit what that releases; rows' done flags."""
        events = []
        for i, (d, tok) in enumerate(zip(self.detoks, tokens, strict=True)):
            if d.finish is None:
                text = d.push(tok, self.eos_id)
                if text or d.finish is not None:
                    events.append(self._event(i, text))
        if events:
            self.emit(events)
        return [d.finish is not None for d in self.detoks]

    def _event(self, i: int, text: str) -> SeqEvent:
        d, lp = self.detoks[i], None
        n = len(d.ids) + d.eos  # tokens generated, EOS included (as vLLM counts them)
        if self.specs[i].logprobs is not None:
            lp = self.sampler.records[i].slice(self.sent[i], n)
            self.sent[i] = n
        return SeqEvent(self.index[i], text, n, d.finish, lp)

    def finish_all(self) -> None:
        """Finish rows that ``generate`` left open (it stopped at ``max_new_tokens``)."""
        events = []
        for i, d in enumerate(self.detoks):
            if d.finish is None:
                d.finish = "length"
                events.append(self._event(i, d._flush()))
        if events:
            self.emit(events)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = self.step(input_ids[:, -1].tolist())
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


_CHUNK = 256  # prompt positions per lm_head call: bounds the (chunk, vocab) float32 logits


class HFEngine:
    """Batched generation with a Hugging Face causal LM (CPU or one GPU).

    Two paths share one batch. Sequences that need at most one new token, and every
    sequence that asks for its prompt's log-probabilities, go through one forward pass over
    their prompts (no KV cache, hidden states only; ``lm_head`` runs on the positions that
    are scored, a chunk at a time): this is what lm-eval's loglikelihood requests
    (``echo`` + ``logprobs`` + ``max_tokens`` 0 or 1) cost. The rest run in one
    ``generate`` call.
    """

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
        The returned events carry the whole completion text (and log-probabilities).
        """
        events: list[SeqEvent] = []

        def out(evs: list[SeqEvent]) -> None:
            events.extend(evs)
            if emit is not None:
                emit(evs)

        scored = [
            i for i, s in enumerate(specs) if s.max_tokens <= 1 or s.prompt_logprobs is not None
        ]
        long = [i for i, s in enumerate(specs) if s.max_tokens > 1]
        with self._lock:
            if scored:
                self._one_pass([specs[i] for i in scored], scored, out)
            if long:
                self._generate([specs[i] for i in long], long, out)
        return merge_events(len(specs), events)

    def _padded(self, specs: list[SeqSpec]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (batch, width) ids and attention mask: every row's last token aligned."""
        width = max(len(s.prompt_ids) for s in specs)
        ids = torch.full((len(specs), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(specs), width), dtype=torch.long)
        for i, s in enumerate(specs):
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids)
            mask[i, width - len(s.prompt_ids) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _one_pass(self, specs: list[SeqSpec], index: list[int], out: Emit) -> None:
        ids, mask = self._padded(specs)
        # Positions count real tokens only, so a padded row sees what it would see alone.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model.base_model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False
        ).last_hidden_state  # (batch, width, hidden)
        head = self.model.get_output_embeddings()
        for j, s in enumerate(specs):
            if s.prompt_logprobs is not None:
                h = hidden[j, hidden.shape[1] - len(s.prompt_ids) :]  # (len, hidden)
                pl = self._prompt_logprobs(head, h, s.prompt_ids, s.prompt_logprobs)
                out([SeqEvent(index[j], "", 0, None, prompt_logprobs=pl)])
        zero = [j for j, s in enumerate(specs) if s.max_tokens <= 0]
        if zero:  # echo only: finished, with no completion tokens
            none = [None if specs[j].logprobs is None else TokenLogprobs() for j in zero]
            out([SeqEvent(index[j], "", 0, "length", lp) for j, lp in zip(zero, none, strict=True)])
        one = [j for j, s in enumerate(specs) if s.max_tokens == 1]
        if one:
            sub = [specs[j] for j in one]
            logits = head(hidden[one, -1]).float()  # (rows, vocab): the next token's
            sampler = _Sampler(sub, self.device)
            stopper = _RowStopper(
                self.tokenizer, sub, self.eos_id, out, sampler, [index[j] for j in one]
            )
            stopper.step(sampler.choose(logits).tolist())

    def _prompt_logprobs(self, head: Any, h: torch.Tensor, ids: list[int], k: int) -> TokenLogprobs:
        """Each prompt token's log-prob given the tokens before it (the first has none)."""
        res = TokenLogprobs([ids[0]], [None], [None])
        for a in range(0, len(ids) - 1, _CHUNK):
            b = min(len(ids) - 1, a + _CHUNK)
            lp = head(h[a:b]).float().log_softmax(-1)  # (b - a, vocab): predicts ids[a+1 : b+1]
            target = torch.tensor(ids[a + 1 : b + 1], device=lp.device)
            res.extend(_top(lp, target, [k] * (b - a)))
        return res

    def _generate(self, specs: list[SeqSpec], index: list[int], out: Emit) -> None:
        ids, mask = self._padded(specs)
        sampler = _Sampler(specs, self.device)
        stopper = _RowStopper(self.tokenizer, specs, self.eos_id, out, sampler, index)
        self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(s.max_tokens for s in specs),
            do_sample=False,
            logits_processor=LogitsProcessorList([_RowSampler(sampler)]),
            stopping_criteria=[stopper],
            eos_token_id=self.eos_id,
            pad_token_id=self.eos_id,
        )
        stopper.finish_all()
