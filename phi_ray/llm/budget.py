"""Prices and budgets: what a call costs, and whether the next one may be made.

Budgets cover everything a stage's cache has paid for, across reruns: a rerun starts
from the cache's totals, so ``budget_usd: 50`` means 50 dollars for the stage in this
run directory, not 50 per attempt.

Before each call the caller *reserves* the call's worst case: the prompt's token bound
(UTF-8 bytes, see :meth:`Request.prompt_bound`) plus ``max_tokens * n`` of output,
scaled by :attr:`Ledger.out_ratio` once the endpoint has been seen to answer past
``max_tokens``. A call is refused when spent + reserved + its worst case would pass a cap,
so concurrent calls cannot overshoot together. After the call the reservation is replaced
by the real usage, whatever it is (an answer past its reservation is paid: it is counted,
and it raises the ratio every later reservation uses).

A server that ignores ``max_tokens`` can only be found out by its first answer, so while
a capped ledger has not seen one (:attr:`Ledger.calibrated`) the limiter lets one call run
at a time: the first wave cannot overshoot together.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger("phi_ray.llm")


def find_price(model: str, prices: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The price entry for ``model``: exact name, else the longest prefix
    (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``)."""
    if model in prices:
        return prices[model]
    best = max((k for k in prices if model.startswith(k)), key=len, default=None)
    return prices[best] if best is not None else None


def cost_usd(
    model: str, prompt_tokens: int, completion_tokens: int, prices: dict[str, dict[str, float]]
) -> float:
    """USD for one call; prices are per million tokens, ``{input: x, output: y}``.
    An unpriced model costs 0 here: a dollar budget refuses such models up front."""
    p = find_price(model, prices)
    if p is None:
        return 0.0
    return (prompt_tokens * p.get("input", 0.0) + completion_tokens * p.get("output", 0.0)) / 1e6


@dataclass(frozen=True)
class Worst:
    """A call's worst case before the output ratio: prompt bound, output cap, prices."""

    prompt: int
    out: int
    usd_in: float = 0.0  # USD per 1M tokens
    usd_out: float = 0.0


@dataclass
class Ledger:
    """Spend and reservations against optional caps. Pure bookkeeping, no I/O."""

    max_tokens: int | None = None
    max_usd: float | None = None
    spent_tokens: int = 0  # includes earlier sessions (the cache's totals)
    spent_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0
    out_ratio: float = 1.0  # most output seen per token of max_tokens asked (>= 1)
    calibrated: bool = False  # an answer's real output length has been seen

    @property
    def capped(self) -> bool:
        return self.max_tokens is not None or self.max_usd is not None

    def worst(self, w: Worst) -> tuple[int, float]:
        """(tokens, USD) to reserve for a call, with the output scaled by ``out_ratio``."""
        out = math.ceil(w.out * self.out_ratio)
        return w.prompt + out, (w.prompt * w.usd_in + out * w.usd_out) / 1e6

    def refusal(self, tokens: int, usd: float) -> str | None:
        """Why a call whose worst case is (tokens, usd) may not start, or None if it may."""
        if (
            self.max_tokens is not None
            and self.spent_tokens + self.reserved_tokens + tokens > self.max_tokens
        ):
            return (
                f"token budget reached: {self.spent_tokens:,} of llm.budget_tokens="
                f"{self.max_tokens:,} spent, the next call may need up to {tokens:,}"
            )
        if self.max_usd is not None and self.spent_usd + self.reserved_usd + usd > self.max_usd:
            return (
                f"dollar budget reached: ${self.spent_usd:.4f} of llm.budget_usd="
                f"${self.max_usd:.4f} spent, the next call may cost up to ${usd:.4f}"
            )
        return None

    def reserve(self, tokens: int, usd: float) -> None:
        self.reserved_tokens += tokens
        self.reserved_usd += usd

    def settle(
        self, reserved: tuple[int, float], tokens: int, usd: float, ratio: float | None = None
    ) -> None:
        """Replace a reservation by what the call really cost (0 if it was not paid).

        ``ratio``: the answer's output tokens per token of max_tokens asked for, when an
        answer came back; above 1 the endpoint ignores max_tokens and later calls reserve
        that much more.
        """
        self.reserved_tokens -= reserved[0]
        self.reserved_usd -= reserved[1]
        self.spent_tokens += tokens
        self.spent_usd += usd
        if ratio is not None:
            self.calibrated = True
            if ratio > self.out_ratio:
                log.warning(
                    "the endpoint answered %.2fx the max_tokens asked for; later calls reserve "
                    "budget for that much output",
                    ratio,
                )
                self.out_ratio = ratio
