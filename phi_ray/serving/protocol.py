"""From a validated request to engine work, and from engine events back to OpenAI's shapes.

Prompts come as vLLM's OpenAI server takes them: a string, a list of strings, token ids,
or a list of token-id lists (lm-eval sends token ids). A request's sequences (prompts x
``n``) are split into model calls of at most one batch each, so ``n`` is not capped by
the batch size. Log-probabilities come back in OpenAI's legacy completion format
(``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset``), which is what
lm-eval's ``local-completions`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from phi_ray.serving.engine import GREEDY_BELOW, SeqSpec, TokenLogprobs
from phi_ray.serving.errors import APIError

LOGPROB_FLOOR = -9999.0  # what vLLM reports for -inf: JSON has no infinity
MAX_STOP_CHARS = 1024  # per stop: bounds the stop automaton a request builds


@dataclass
class Limits:
    """The served model's limits a request is checked against."""

    context: int
    vocab: int  # token ids must be < this (the tokenizer's size)
    max_tokens: int
    max_n: int
    max_prompts: int
    max_stops: int
    batch: int  # sequences per model call


@dataclass
class Job:
    """A validated completion request: its prompts and the model calls that serve it."""

    prompts: list[list[int]]  # token ids per prompt
    texts: list[str]  # per prompt, the text that ``echo`` returns
    n: int
    calls: list[tuple[int, list[SeqSpec]]]  # (first choice index, its sequences) per call
    echo: bool
    logprobs: int | None
    include_usage: bool = False

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def _param(name: str, i: int, many: bool) -> str:
    return f"{name}[{i}]" if many else name


def encode_prompts(
    prompt: Any, tokenizer: Any, limits: Limits
) -> tuple[list[list[int]], list[str]]:
    """(token ids, text) per prompt, from any of the four prompt forms."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be an empty list", param="prompt")
    if len(prompt) > limits.max_prompts:
        raise APIError(400, f"at most {limits.max_prompts} prompts per request", "prompt")
    ids, texts, many = [], [], len(prompt) > 1
    for i, p in enumerate(prompt):
        if not p:
            raise APIError(400, "prompt must not be empty", param=_param("prompt", i, many))
        if isinstance(p, str):
            ids.append(tokenizer.encode(p))
            texts.append(p)
            continue
        bad = next((t for t in p if not 0 <= t < limits.vocab), None)
        if bad is not None:
            raise APIError(
                400,
                f"token id {bad} is out of vocabulary (0 <= id < {limits.vocab})",
                param=_param("prompt", i, many),
            )
        ids.append(list(p))
        texts.append(tokenizer.decode(p))
    return ids, texts


def stop_list(stop: str | list[str] | None, limits: Limits) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > limits.max_stops:
        raise APIError(400, f"at most {limits.max_stops} stop sequences", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise APIError(400, f"a stop sequence is longer than {MAX_STOP_CHARS} characters", "stop")
    return [s for s in stops if s]


def check_length(longest: int, max_tokens: int, limits: Limits) -> None:
    if max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens must be <= {limits.max_tokens}", param="max_tokens")
    if longest + max_tokens > limits.context:
        raise APIError(
            400,
            f"This model's maximum context length is {limits.context} tokens, however you "
            f"requested {longest + max_tokens} tokens ({longest} in your prompt; "
            f"{max_tokens} for the completion). Please reduce your prompt or completion.",
            param="prompt" if longest >= limits.context else "max_tokens",
            code="context_length_exceeded",
        )


def build_job(
    body: Any,
    prompts: list[list[int]],
    texts: list[str],
    limits: Limits,
    max_tokens: int | None,
    echo: bool = False,
    logprobs: int | None = None,
) -> Job:
    """Check ``body``'s sampling settings against ``limits``; one SeqSpec per choice."""
    if body.n > limits.max_n:
        raise APIError(400, f"n must be <= {limits.max_n}", param="n")
    stops = stop_list(body.stop, limits)
    longest = max(len(x) for x in prompts)
    if max_tokens is None:  # chat default: as much as fits, up to the limit
        max_tokens = max(1, min(limits.max_tokens, limits.context - longest))
    check_length(longest, max_tokens, limits)
    if max_tokens == 0 and not echo:
        raise APIError(400, "max_tokens 0 needs echo (it returns only the prompt)", "max_tokens")
    # Below GREEDY_BELOW a temperature only overflows the sampler: it is greedy.
    temperature = body.temperature if body.temperature >= GREEDY_BELOW else 0.0
    seqs = [
        SeqSpec(
            prompt_ids=ids,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=body.top_p,
            stop=stops,
            seed=None if body.seed is None else (body.seed + j) % 2**63,
            logprobs=logprobs,
            prompt_logprobs=logprobs if echo else None,
        )
        for ids in prompts
        for j in range(body.n)
    ]
    calls = [(a, seqs[a : a + limits.batch]) for a in range(0, len(seqs), limits.batch)]
    opts = getattr(body, "stream_options", None)
    usage = bool(opts and opts.include_usage)
    return Job(prompts, texts, body.n, calls, echo, logprobs, usage)


class TokenText:
    """Token id -> its text, as logprobs show it (cached: the same ids come back often)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if (s := self.cache.get(token)) is None:
            s = self.cache[token] = self.tok.decode([token], clean_up_tokenization_spaces=False)
        return s


def _lp(x: float | None) -> float | None:
    return None if x is None else (LOGPROB_FLOOR if math.isnan(x) else max(x, LOGPROB_FLOOR))


def format_logprobs(
    text: TokenText, runs: list[TokenLogprobs | None], offset: int = 0
) -> dict[str, Any]:
    """OpenAI's ``choices[i].logprobs`` for the tokens of ``runs`` (prompt, then completion).

    ``top_logprobs[i]`` holds the top-k tokens and the chosen one (as vLLM's do); the
    prompt's first token has no context, so its logprob and top entry are null.
    """
    tokens, lps, tops, offsets = [], [], [], []
    for run in runs:
        if run is None:
            continue
        for tid, lp, top in zip(run.ids, run.logprobs, run.top, strict=True):
            s = text(tid)
            tokens.append(s)
            offsets.append(offset)
            offset += len(s)
            lps.append(_lp(lp))
            if lp is None:
                tops.append(None)
                continue
            d = {text(t): _lp(v) for t, v in top or []}
            d.setdefault(s, _lp(lp))
            tops.append(d)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
