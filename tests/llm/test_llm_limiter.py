"""The limiter core and the budget ledger (pure asyncio; the Ray actor runs the same core)."""

from __future__ import annotations

import asyncio

import pytest

from phi_ray.llm.budget import Ledger, Worst, cost_usd, find_price
from phi_ray.llm.limiter import LimiterCore


def test_prices_match_exact_then_longest_prefix():
    prices = {"gpt-4": {"input": 30, "output": 60}, "gpt-4o-mini": {"input": 0.15, "output": 0.6}}
    assert find_price("gpt-4o-mini-2024-07-18", prices) == prices["gpt-4o-mini"]
    assert find_price("gpt-4-0613", prices) == prices["gpt-4"]
    assert find_price("llama", prices) is None
    assert cost_usd("gpt-4", 1_000_000, 500_000, prices) == pytest.approx(60.0)


def test_ledger_counts_reservations_so_concurrent_calls_cannot_overshoot():
    led = Ledger(max_tokens=100, spent_tokens=40)
    assert led.refusal(50, 0) is None
    led.reserve(50, 0)
    assert "token budget" in led.refusal(20, 0)  # 40 spent + 50 reserved + 20 > 100
    led.settle((50, 0), 10, 0)  # the call used far less than reserved
    assert led.spent_tokens == 50 and led.reserved_tokens == 0
    assert led.refusal(20, 0) is None


def _usd(usd: float) -> Worst:
    """A call whose worst case is 1 token costing ``usd``."""
    return Worst(1, 0, usd * 1e6, 0.0)


def test_limiter_caps_slots_latches_budget_and_reaps_dead_leases():
    async def scenario():
        core = LimiterCore()
        await core.configure(2, 0.2, None, 1.0, (0, 0.0), True, 1.0)  # history: calibrated
        a, _ = await core.acquire(_usd(0.1))
        b, _ = await core.acquire(_usd(0.1))
        waiter = asyncio.ensure_future(core.acquire(_usd(0.1)))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # both slots taken
        await core.release(a, 1, 0.1)
        c, _ = await asyncio.wait_for(waiter, 2)
        assert c is not None
        # b's holder "dies": after ttl its slot comes back without a release
        d, _ = await asyncio.wait_for(core.acquire(_usd(0.1)), 3)
        assert d is not None and b not in core.active
        await core.release(c, 1, 0.5)
        await core.release(d, 1, 0.45)  # 1.05 USD spent of 1.0
        lease, why = await core.acquire(_usd(0.01))
        assert lease is None and "dollar budget" in why
        assert (await core.acquire(_usd(0.0)))[1] == why  # latched for everyone
        await core.configure(2, 0.2, None, 5.0, (0, 0.0), True, 1.0)  # the owner's reset
        assert (await core.acquire(_usd(0.01)))[0] is not None

    asyncio.run(scenario())


def test_a_capped_ledger_runs_one_call_until_it_has_seen_an_answer_then_scales_reservations():
    async def scenario():
        core = LimiterCore()
        await core.configure(4, 30.0, 700, None, (0, 0.0), True)  # no history
        a, _ = await core.acquire(Worst(10, 50))
        second = asyncio.ensure_future(core.acquire(Worst(10, 50)))
        await asyncio.sleep(0.05)
        assert not second.done()  # one call at a time until one answer was seen
        await core.release(a, 10 + 150, 0.0, 150 / 50)  # it answered 3x its max_tokens
        assert (await asyncio.wait_for(second, 2))[0] is not None
        assert core.ledger.out_ratio == 3.0
        assert core.ledger.reserved_tokens == 10 + 150  # b's output reserved at 3x
        c, _ = await core.acquire(Worst(10, 50))
        assert c is not None and len(core.active) == 2  # calibrated: slots open up
        d, _ = await core.acquire(Worst(10, 50))  # 160 spent + 3 x 160 reserved = 640
        assert d is not None
        lease, why = await core.acquire(Worst(10, 50))  # 640 + 160 > 700
        assert lease is None and "token budget" in why

    asyncio.run(scenario())
