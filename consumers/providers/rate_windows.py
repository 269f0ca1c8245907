"""Focus's credit windows, one per token.

Focus allows every token its own number of requests per window (100 a minute in production,
`Rate-Limit-Limit`) and says after every answer how many are left (`Rate-Limit-Remaining`) and
when the window starts over (`Rate-Limit-Reset`, seconds). Over it: 429. One company's month-end
batch must wait for *its* window only, and must not spend another company's.

`CreditWindow` is the bookkeeping of one token, pure (the clock is an argument): a request
*reserves* a credit before it is sent, so hundreds of concurrent callers never send more than
the window has left (each one past it would be a 429). Until the first answer tells the window,
one request at a time goes out (a probe); after a reset the window is assumed full again, at the
limit the last answer gave. `RateWindows` is the thin async shell: callers wait for their
token's credit, never for another token's, and without holding anything (a call slot, a
connection) while they wait.

A low-priority caller (the reconciler's GETs) only takes a credit while more than `headroom`
of the window is left, so emissions keep the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# Seconds a window's reset may move between two answers and still be the same window: Focus
# (and the sandbox) round `Rate-Limit-Reset` up to whole seconds.
SAME_WINDOW = 1.0
# While the window is unknown (no answer yet), how long a waiter sleeps before it looks again:
# the probe's answer wakes it sooner.
PROBE_WAIT = 0.5
# Paced windows spend their credits evenly over the window (limit / length per second), with
# this share of the limit available at once: a note of a quiet company goes out at once, and a
# burst does not send its whole window in one instant (a hundred answers at once, then their
# hundred callbacks, each a burst of database work every other company's notes queue behind).
PACE_BURST = 0.1


@dataclass
class CreditWindow:
    """One token's credits, as far as its answers told us."""

    limit: int | None = None
    remaining: int | None = None  # what is left to reserve (answers minus our reservations)
    reset_at: float = 0.0  # when the current window starts over (clock seconds)
    in_flight: int = 0  # reserved, not answered yet
    blocked_until: float = 0.0  # a 429's Retry-After
    # None until an answer came: then whether Focus (or whatever stands in for it) meters this
    # token at all. A provider that sends no `Rate-Limit-*` is not held to one probe at a time.
    metered: bool | None = None
    # The longest `Rate-Limit-Reset` seen: the window's length (the first answer of a window
    # tells it), so the token's rate is known without configuring it.
    period: float = 0.0
    pace: bool = False
    bucket: float = -1.0  # paced credits available now (-1: not started)
    bucket_at: float = 0.0

    def reserve(self, now: float, headroom: int = 0) -> float:
        """Reserve one credit and answer 0.0, or answer how long to wait before asking again."""
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.metered is False:
            self.in_flight += 1
            return 0.0
        if self.remaining is not None and now >= self.reset_at:
            # The window started over: full again, as far as we know the limit.
            self.remaining = None if self.limit is None else self.limit - self.in_flight
        if self.remaining is None:
            # Unknown: one probe at a time, until an answer tells the window.
            if self.in_flight:
                return PROBE_WAIT
            self.in_flight += 1
            return 0.0
        if self.remaining > headroom:
            if self.pace and self.limit and self.period > 0:
                wait = self._paced(now)
                if wait > 0:
                    return wait
            self.remaining -= 1
            self.in_flight += 1
            return 0.0
        return max(self.reset_at - now, 0.001)

    def _paced(self, now: float) -> float:
        """Take one paced credit (0.0) or say how long until the next one."""
        assert self.limit is not None
        rate = self.limit / self.period
        most = max(1.0, math.ceil(self.limit * PACE_BURST))
        if self.bucket < 0:
            self.bucket = most
        else:
            self.bucket = min(most, self.bucket + (now - self.bucket_at) * rate)
        self.bucket_at = now
        if self.bucket < 1.0:
            return (1.0 - self.bucket) / rate
        self.bucket -= 1.0
        return 0.0

    def release(self) -> None:
        """A reservation whose request never reached Focus (stopping, connection refused)."""
        self.in_flight = max(self.in_flight - 1, 0)
        if self.remaining is not None:
            self.remaining += 1

    def observe(self, now: float, status: int | None, headers: Mapping[str, str]) -> None:
        """The answer to a reserved request: `headers` with lower-case names (or none, when
        the request failed on the way)."""
        self.in_flight = max(self.in_flight - 1, 0)
        limit = _int(headers.get("rate-limit-limit"))
        remaining = _int(headers.get("rate-limit-remaining"))
        reset = _float(headers.get("rate-limit-reset"))
        if limit is not None:
            self.limit = limit
        if status is not None and self.metered is None:
            self.metered = remaining is not None and reset is not None
        if remaining is not None and reset is not None:
            self.metered = True
            self.period = max(self.period, reset)
            reset_at = now + reset
            # Other reservations are out: the window has them to pay for too.
            left = max(remaining - self.in_flight, 0)
            if self.remaining is None or reset_at > self.reset_at + SAME_WINDOW:
                self.reset_at, self.remaining = reset_at, left  # a window we had not seen
            else:
                self.remaining = min(self.remaining, left)
        if status == 429:
            wait = _float(headers.get("retry-after")) or reset or 1.0
            self.blocked_until = max(self.blocked_until, now + wait)
            self.reset_at = max(self.reset_at, now + wait)
            self.remaining = 0
            self.metered = True

    def snapshot(self, now: float) -> dict[str, float | int | None]:
        return {
            "limit": self.limit,
            "remaining": self.remaining,
            "in_flight": self.in_flight,
            "resets_in": round(max(self.reset_at - now, 0.0), 3) if self.reset_at else None,
        }


class RateWindows:
    """The credit windows of every token a client has used; waits are per token."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        headroom: float = 0.2,
        pace: bool = True,
    ) -> None:
        self._clock = clock
        self._pace = pace
        self._windows: dict[str, CreditWindow] = {}
        # One waiter per token and priority looks at the window at a time; the others queue
        # behind it (FIFO, asleep): hundreds of records waiting for one company's credits cost
        # one timer, not hundreds of wake-ups at every change.
        self._turns: dict[tuple[str, bool], asyncio.Lock] = {}
        self._answered: dict[str, asyncio.Event] = {}
        self._stopped = False
        self.headroom = headroom  # share of the window low-priority callers leave alone

    def window(self, token: str) -> CreditWindow:
        found = self._windows.get(token)
        if found is None:
            found = self._windows[token] = CreditWindow(pace=self._pace)
        return found

    async def acquire(self, token: str, low_priority: bool = False) -> bool:
        """Wait for one of `token`'s credits and reserve it: True. False, with nothing
        reserved, once `stop()` was called (a shutdown must not wait out a window). Cancellable
        at any point."""
        window = self.window(token)
        if (
            not self._stopped
            and window.reserve(self._clock(), self._keep(window, low_priority)) <= 0
        ):
            return True  # the common case: a credit at once, no queue
        turn = self._turns.get((token, low_priority))
        if turn is None:
            turn = self._turns[token, low_priority] = asyncio.Lock()
        async with turn:
            return await self._wait_for_credit(token, window, low_priority)

    def _keep(self, window: CreditWindow, low_priority: bool) -> int:
        if low_priority and window.limit is not None:
            return math.ceil(window.limit * self.headroom)
        return 0

    async def _wait_for_credit(self, token: str, window: CreditWindow, low_priority: bool) -> bool:
        while True:
            if self._stopped:
                return False
            wait = window.reserve(self._clock(), self._keep(window, low_priority))
            if wait <= 0:
                return True
            answered = self._answered.setdefault(token, asyncio.Event())
            # A probe's answer (or a 429's) may tell the window sooner than the wait.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), timeout=wait)

    def stop(self) -> None:
        """Signal-safe: every waiter returns False now, and later callers at once."""
        self._stopped = True
        for token in list(self._answered):
            self._wake(token)

    def release(self, token: str) -> None:
        self.window(token).release()
        self._wake(token)

    def observe(self, token: str, status: int | None, headers: Mapping[str, str]) -> None:
        window = self.window(token)
        unknown = window.remaining is None
        window.observe(self._clock(), status, headers)
        # Wake the token's waiters only when the answer can change their wait: the window
        # became known (they waited for a probe) or has credits again. A token whose window is
        # spent has hundreds of records waiting for its reset; waking them all at each of its
        # answers cost more CPU than the calls themselves.
        if unknown or window.remaining or window.metered is False:
            self._wake(token)

    def _wake(self, token: str) -> None:
        answered = self._answered.pop(token, None)
        if answered is not None:
            answered.set()

    def rate(self, token: str) -> float | None:
        """Credits per second of `token`, once Focus told its limit and window."""
        window = self._windows.get(token)
        if window is None or window.limit is None or window.period <= 0:
            return None
        return window.limit / window.period


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None
