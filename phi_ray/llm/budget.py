"""Prices and budgets: what a call costs, and whether the next one may be made.

Budgets cover everything a stage's cache has paid for, across reruns: a rerun starts
from the cache's totals, so ``budget_usd: 50`` means 50 dollars for the stage in this
run directory, not 50 per attempt. Before each call the caller *reserves* a pessimistic
estimate (prompt at 3 chars/token plus ``max_tokens`` of output); the call is refused when
spent + reserved + estimate would pass a cap, so concurrent calls can never overshoot.
After the call the reservation is replaced by the real usage.
"""

from __future__ import annotations

import logging
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
    """USD for one call; prices are per million tokens, ``{input: x, output: y}``."""
    p = find_price(model, prices)
    if p is None:
        return 0.0
    return (prompt_tokens * p.get("input", 0.0) + completion_tokens * p.get("output", 0.0)) / 1e6


@dataclass
class Ledger:
    """Spend and reservations against optional caps. Pure bookkeeping, no I/O."""

    max_tokens: int | None = None
    max_usd: float | None = None
    spent_tokens: int = 0  # includes earlier sessions (the cache's totals)
    spent_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0

    def refusal(self, tokens: int, usd: float) -> str | None:
        """Why a call estimated at (tokens, usd) may not start, or None if it may."""
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

    def settle(self, reserved: tuple[int, float], tokens: int, usd: float) -> None:
        """Replace a reservation by what the call really cost (0 if it was not paid)."""
        self.reserved_tokens -= reserved[0]
        self.reserved_usd -= reserved[1]
        self.spent_tokens += tokens
        self.spent_usd += usd
