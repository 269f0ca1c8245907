"""One Focus credit window per token (issue 15): reservations before sending, so concurrent
callers never send past what the window has left; a probe until the window is known; a reset
refills it; a 429 blocks the token for its Retry-After; low-priority callers leave headroom."""

from __future__ import annotations

import asyncio
import time

from notaflow.consumers.providers.rate_windows import PROBE_WAIT, CreditWindow, RateWindows


def answer(remaining: int, reset: float, limit: int = 10) -> dict[str, str]:
    return {
        "rate-limit-limit": str(limit),
        "rate-limit-remaining": str(remaining),
        "rate-limit-reset": str(reset),
    }


def test_unknown_window_sends_one_probe_at_a_time() -> None:
    w = CreditWindow()
    assert w.reserve(0.0) == 0.0
    assert w.reserve(0.0) == PROBE_WAIT  # the probe's answer tells the window first
    w.observe(0.1, 200, answer(9, 60))
    assert w.remaining == 9


def test_reservations_never_exceed_what_the_window_has_left() -> None:
    w = CreditWindow()
    w.reserve(0.0)
    w.observe(0.0, 200, answer(3, 10))
    granted = [w.reserve(0.1) for _ in range(5)]
    assert granted[:3] == [0.0, 0.0, 0.0]
    assert granted[3] > 9.0 and granted[4] > 9.0  # wait for the reset, not a 429
    # Answers to the three: the server counts them too, the window stays spent.
    for left in (2, 1, 0):
        w.observe(0.2, 200, answer(left, 9.8))
    assert w.reserve(0.3) > 9.0


def test_an_answer_counts_the_other_reservations_still_out() -> None:
    w = CreditWindow()
    w.reserve(0.0)
    w.observe(0.0, 200, answer(10, 10))
    for _ in range(4):
        assert w.reserve(0.0) == 0.0
    w.observe(0.1, 200, answer(9, 10))  # the server saw one; three are still on the way
    assert w.remaining == 6


def test_the_reset_refills_the_window_at_the_last_limit() -> None:
    w = CreditWindow()
    w.reserve(0.0)
    w.observe(0.0, 200, answer(0, 1.0, limit=50))
    assert w.reserve(0.5) > 0.4
    assert w.reserve(1.0) == 0.0
    assert w.remaining == 49


def test_a_429_blocks_the_token_for_its_retry_after() -> None:
    w = CreditWindow()
    w.reserve(0.0)
    w.observe(0.0, 429, {"retry-after": "2", "rate-limit-remaining": "0", "rate-limit-reset": "2"})
    assert 1.9 < w.reserve(0.0) <= 2.0
    assert w.reserve(2.0) == 0.0


def test_a_provider_without_rate_headers_is_not_metered() -> None:
    w = CreditWindow()
    w.reserve(0.0)
    w.observe(0.1, 202, {})
    assert all(w.reserve(0.2) == 0.0 for _ in range(100))


def test_low_priority_leaves_the_headroom() -> None:
    w = CreditWindow()
    w.reserve(0.0)
    w.observe(0.0, 200, answer(3, 10))
    assert w.reserve(0.0, headroom=2) == 0.0
    assert w.reserve(0.0, headroom=2) > 0.0  # two left: kept for emissions
    assert w.reserve(0.0) == 0.0


def test_a_released_reservation_gives_its_credit_back() -> None:
    w = CreditWindow()
    w.reserve(0.0)
    w.observe(0.0, 200, answer(1, 10))
    assert w.reserve(0.0) == 0.0
    w.release()
    assert w.reserve(0.0) == 0.0


async def test_one_tokens_wait_does_not_hold_another_token() -> None:
    windows = RateWindows(pace=False)
    await windows.acquire("a")
    windows.observe("a", 200, answer(0, 0.3))
    await windows.acquire("b")
    windows.observe("b", 200, answer(5, 60))
    started = time.monotonic()
    waiting = asyncio.ensure_future(windows.acquire("a"))
    for _ in range(5):
        await windows.acquire("b")  # not behind "a"
    assert time.monotonic() - started < 0.1
    assert not waiting.done()
    await waiting
    assert time.monotonic() - started >= 0.28


def test_the_rate_is_the_limit_over_the_longest_reset_seen() -> None:
    windows = RateWindows(pace=False)
    assert windows.rate("a") is None
    windows.window("a").reserve(0.0)
    windows.observe("a", 200, answer(99, 60, limit=100))
    windows.observe("a", 200, answer(98, 59, limit=100))
    assert windows.rate("a") == 100 / 60


async def test_stop_releases_the_waiters_without_a_credit() -> None:
    windows = RateWindows(pace=False)
    await windows.acquire("a")
    windows.observe("a", 200, answer(0, 60))
    waiting = asyncio.ensure_future(windows.acquire("a"))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    windows.stop()
    assert await waiting is False
    assert time.monotonic() - started < 0.1
    assert await windows.acquire("b") is False


def test_a_paced_window_spends_its_credits_evenly() -> None:
    w = CreditWindow(pace=True)
    w.reserve(0.0)
    w.observe(0.0, 200, answer(99, 2.0, limit=100))  # 50 credits a second
    at_once = 0
    while w.reserve(0.0) == 0.0:
        at_once += 1
    assert at_once == 10  # PACE_BURST of the limit at once
    assert w.reserve(0.0) == 0.02  # then one every 20 ms
    assert w.reserve(0.02) == 0.0
    # Over the window the paced credits add up to the limit, never past what is left.
    granted = sum(1 for i in range(1, 98) if w.reserve(0.02 + i * 0.02) == 0.0)
    assert granted == 88  # 99 left after the probe, 11 taken; the window resets at 2.0


async def test_waiters_of_one_token_queue_in_turn() -> None:
    windows = RateWindows()
    await windows.acquire("a")
    windows.observe("a", 200, answer(99, 1.0, limit=100))
    while windows.window("a").reserve(time.monotonic()) == 0.0:
        pass  # the paced burst spent
    started = time.monotonic()
    await asyncio.gather(*(windows.acquire("a") for _ in range(20)))
    took = time.monotonic() - started
    assert 0.15 < took < 0.5  # 20 credits at 100 a second, one after the other
