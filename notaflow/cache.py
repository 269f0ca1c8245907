"""A small read-through cache for lookups on hot paths (tenants by token at the ingress, by id in
the consumers): each value is kept `ttl` seconds from when its load *started* (so a change made
while a load ran still shows within `ttl`), and concurrent misses of one key share a single load,
so an entry expiring under load costs one query, not one per request in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SharedLoadCache(Generic[K, V]):
    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        ttl: float,
        size: int = 10_000,
        keep: Callable[[V], bool] = lambda _: True,
        clock: Callable[[], float] = time.monotonic,
        ttl_of: Callable[[V], float] | None = None,
    ) -> None:
        self._load = load
        self._ttl = ttl
        self._ttl_of = ttl_of  # a TTL per value (e.g. shorter for "unknown"), else `ttl`
        self._size = size
        self._keep = keep  # which values are cached (e.g. not "unknown", to find new ones at once)
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    async def get(
        self, key: K, fresh: bool = False, load: Callable[[], Awaitable[V]] | None = None
    ) -> V:
        """The cached value, or a load; `fresh` skips the cached value (not a load under way).
        `load` replaces the cache's own loader for this miss (when the key is only a digest of
        what the loader needs)."""
        hit = self._entries.get(key)
        if not fresh and hit is not None and hit[0] > self._clock():
            return hit[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._fill(key, load))
            self._loading[key] = loading
            loading.add_done_callback(lambda _: self._loading.pop(key, None))
        # Shielded: a caller that goes away does not cancel the others' load.
        return await asyncio.shield(loading)

    async def _fill(self, key: K, load: Callable[[], Awaitable[V]] | None) -> V:
        started = self._clock()
        value = await (load() if load is not None else self._load(key))
        ttl = self._ttl if self._ttl_of is None else self._ttl_of(value)
        if not self._keep(value) or ttl <= 0:
            self._entries.pop(key, None)
            return value
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (started + ttl, value)
        return value
