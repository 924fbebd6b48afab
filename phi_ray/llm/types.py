"""The client layer's value types: requests in, results / failures / batch summaries out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# A parser turns an answer's text into a value, raising (any Exception) when it cannot;
# the exception's message goes into the repair prompt and, in the end, the failures file.
Parser = Callable[[str], Any]

REPAIR_PROMPT = (
    "Your previous answer could not be used: {error}. "
    "Answer the same request again, following the required format exactly, with nothing else."
)


class LLMError(RuntimeError):
    """A problem no retry can fix (bad API key, unknown model, unreachable config)."""


class ParseError(ValueError):
    """Raise from a parser to reject an answer; the message tells the model what was wrong."""


class BudgetExceeded(RuntimeError):
    """A token or dollar budget stopped the work; paid answers are cached, a rerun resumes.

    ``counts`` holds done / failed / pending numbers and the spend so far, for the
    pipeline's report.
    """

    def __init__(self, message: str, counts: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.counts = counts or {}


@dataclass(frozen=True)
class Request:
    """One LLM call. Exactly one of ``messages`` (chat) or ``prompt`` (completion).

    ``id`` is the caller's key (e.g. a corpus row id) and comes back on the result.
    ``params`` override the config's (temperature, max_tokens, stop, n, seed, ...).
    ``prompt_version`` and ``cache_salt`` are part of the cache key: bump the version when
    a prompt template changes; use a salt to draw several samples of one prompt.
    ``repair`` is the repair instruction (``{error}`` is filled in); None: the default.
    """

    id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    prompt_version: str = ""
    cache_salt: str = ""
    model: str | None = None
    repair: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError(f"request {self.id}: give exactly one of messages or prompt")

    @property
    def kind(self) -> Literal["chat", "completion"]:
        return "chat" if self.messages is not None else "completion"

    def cache_key(self, model: str, params: dict[str, Any], endpoint: str = "") -> str:
        """sha256 of (endpoint, model, messages/prompt, parameters, prompt version, salt).

        The endpoint is in the key because two servers answering for one model name (a
        provider and a local vLLM, two fine-tunes behind one name) give different answers.
        """
        blob = {
            "endpoint": endpoint,
            "kind": self.kind,
            "model": model,
            "messages": self.messages,
            "prompt": self.prompt,
            "params": params,
            "prompt_version": self.prompt_version,
            "salt": self.cache_salt,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()

    def prompt_bound(self) -> int:
        """An upper bound on the prompt's tokens, whatever the tokenizer.

        Byte-level BPE (GPT-2, cl100k, o200k, Llama 3) never makes more tokens than the
        text has UTF-8 bytes, so bytes bound the text; the chat template adds a few tokens
        per message (OpenAI documents 3-4), bounded here by 8. A CJK character is 3 bytes
        and 1-2 tokens: an estimate such as ``len // 3`` undercounts it, this cannot.
        """
        if self.prompt is not None:
            return len(self.prompt.encode("utf-8", "surrogatepass")) + 8
        total = 8
        for m in self.messages or []:
            for v in m.values():
                total += len(str(v).encode("utf-8", "surrogatepass"))
            total += 8
        return total

    estimate_prompt_tokens = prompt_bound  # the older name


@dataclass
class Result:
    """A parsed answer. ``cached``: no API call was paid for it in this session."""

    id: str
    value: Any
    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    attempts: int = 0  # HTTP attempts, retries included
    repairs: int = 0
    texts: list[str] = field(default_factory=list)  # every choice, when n > 1
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Failure:
    """A request that ended without a usable answer, with the reason (never dropped)."""

    id: str
    reason: str  # "parse" | "http_<status>" | "retries_exhausted" | "error"
    error: str
    text: str | None = None  # the last answer, when there was one
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reason": self.reason,
            "error": self.error,
            "text": self.text,
            **({"meta": self.meta} if self.meta else {}),
        }


@dataclass
class BatchResult:
    """What :meth:`LLMClient.run_batch` returns.

    ``pending`` are ids not answered because a budget stopped the batch (their paid
    parts are cached); ``stats`` is the token / cost / retry accounting for
    ``_SUCCESS.json``; ``budget_message`` says which budget stopped it, or None.
    """

    results: list[Result] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    budget_message: str | None = None

    @property
    def stopped_by_budget(self) -> bool:
        return self.budget_message is not None

    def raise_if_budget(self, what: str = "LLM calls") -> None:
        """Raise :class:`BudgetExceeded` (with counts) if a budget stopped this batch."""
        if self.budget_message is None:
            return
        counts = {
            "done": len(self.results),
            "failed": len(self.failures),
            "pending": len(self.pending),
            **{k: v for k, v in self.stats.items() if isinstance(v, (int, float))},
        }
        raise BudgetExceeded(
            f"{what}: {self.budget_message}; {len(self.results)} done, {len(self.failures)} "
            f"failed, {len(self.pending)} not started. Paid answers are cached: rerun with a "
            "larger llm.budget_usd / llm.budget_tokens to finish the rest.",
            counts,
        )
