"""The read-through cache behind the tenant lookups: shared loads, TTL from the load's start,
values it must not keep, `fresh`, and a caller going away without cancelling the others."""

from __future__ import annotations

import asyncio

from notaflow.cache import SharedLoadCache


class Loads:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, key: str) -> str | None:
        self.calls.append(key)
        await self.gate.wait()
        return None if key == "unknown" else key.upper()


async def test_concurrent_misses_share_one_load_and_hits_reuse_it() -> None:
    load, now = Loads(), [0.0]
    cache = SharedLoadCache(load, ttl=5.0, clock=lambda: now[0])
    load.gate.clear()
    waiting = [asyncio.ensure_future(cache.get("a")) for _ in range(10)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # one caller goes away: the others still get the value
    load.gate.set()
    assert await asyncio.gather(*waiting[1:]) == ["A"] * 9
    assert await cache.get("a") == "A"
    assert load.calls == ["a"]
    now[0] = 5.0  # expired, counted from when the load started
    assert await cache.get("a") == "A"
    assert load.calls == ["a", "a"]
    assert await cache.get("a", fresh=True) == "A"
    assert load.calls == ["a", "a", "a"]


async def test_values_it_must_not_keep_are_loaded_every_time() -> None:
    load = Loads()
    cache = SharedLoadCache(load, ttl=5.0, keep=lambda value: value is not None)
    assert await cache.get("unknown") is None
    assert await cache.get("unknown") is None
    assert load.calls == ["unknown", "unknown"]


async def test_size_bounds_the_entries() -> None:
    load = Loads()
    cache = SharedLoadCache(load, ttl=60.0, size=2)
    for key in ("a", "b", "c", "a"):
        await cache.get(key)
    assert load.calls == ["a", "b", "c", "a"]  # full at "c": cleared, so "a" loads again
