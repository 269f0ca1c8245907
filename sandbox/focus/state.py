"""What every part of one sandbox shares: its counters, clock, rate limit and background tasks."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus.config import FocusSandboxConfig


@dataclass
class Stats:
    posts: Counter[str] = field(default_factory=Counter)  # every POST /v2/nfse, even refused
    emissions: Counter[str] = field(default_factory=Counter)
    authorizations: Counter[str] = field(default_factory=Counter)
    rejections: Counter[str] = field(default_factory=Counter)
    cancellations: Counter[str] = field(default_factory=Counter)
    http500: Counter[str] = field(default_factory=Counter)
    emails: Counter[str] = field(default_factory=Counter)
    callbacks: Counter[str] = field(default_factory=Counter)
    # Requests beyond the POST, by ref (issue 19): GETs of a note, XML downloads.
    consultas: Counter[str] = field(default_factory=Counter)
    downloads: Counter[str] = field(default_factory=Counter)
    # Credits spent, by token: every request a token made and the rate limit let through,
    # the API's and a public file's fetched with the token (focus-2026.md §5).
    credits: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "posts": dict(self.posts),
            "emissions": dict(self.emissions),
            "authorizations": dict(self.authorizations),
            "rejections": dict(self.rejections),
            "cancellations": dict(self.cancellations),
            "http500": dict(self.http500),
            "emails": dict(self.emails),
            "consultas": dict(self.consultas),
            "downloads": dict(self.downloads),
            "credits": dict(self.credits),
            "callbacks": {
                key: self.callbacks[key] for key in ("sent", "failed", "given_up", "dropped")
            },
        }

    def totals(self) -> dict[str, Any]:
        counts = (
            ("posts", self.posts),
            ("emissions", self.emissions),
            ("authorizations", self.authorizations),
            ("rejections", self.rejections),
            ("cancellations", self.cancellations),
            ("http500", self.http500),
            ("emails", self.emails),
        )
        body: dict[str, Any] = {name: counter.total() for name, counter in counts}
        body["callbacks"] = {
            key: self.callbacks[key] for key in ("sent", "failed", "given_up", "dropped")
        }
        return body


@dataclass(frozen=True)
class RateVerdict:
    limit: int
    remaining: int
    reset: int
    allowed: bool

    def headers(self) -> dict[str, str]:
        return {
            "Rate-Limit-Limit": str(self.limit),
            "Rate-Limit-Remaining": str(self.remaining),
            "Rate-Limit-Reset": str(self.reset),
        }


class RateLimiter:
    """Fixed one-minute windows per token; refused requests do not use up the window."""

    def __init__(self, per_minute: int) -> None:
        self._per_minute = per_minute
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, token: str, now: float) -> RateVerdict:
        window = int(now // 60)
        start, used = self._windows.get(token, (window, 0))
        if start != window:
            used = 0
        allowed = used < self._per_minute
        if allowed:
            used += 1
        self._windows[token] = (window, used)
        reset = max(1, math.ceil((window + 1) * 60 - now))
        return RateVerdict(self._per_minute, self._per_minute - used, reset, allowed)


class Background:
    """The sandbox's background work (processing, callbacks), cancelled when it stops."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks weakly, and shutdown must cancel them.
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def begin_stop(self) -> None:
        self.stopping = True
        for task in list(self.tasks):
            task.cancel()

    async def stop(self) -> None:
        self.stopping = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class Shared:
    """One sandbox's state that the municipal and the national notes, the hooks and the test
    controls all read: the config, the counters, the clock, pre-arranged scenarios (by ref,
    whatever the kind) and the background tasks."""

    config: FocusSandboxConfig
    stats: Stats = field(default_factory=Stats)
    scenarios: dict[str, rules.Scenario] = field(default_factory=dict)
    background: Background = field(default_factory=Background)
    clock_offset: float = 0.0

    def now(self) -> float:
        return self.config.clock() + self.clock_offset
