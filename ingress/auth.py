"""Tenant authentication. Focus dialect: HTTP Basic with the token as user, empty password.

Token lookups hit the database once per token per TTL; a revoked token stops working within
`ttl` seconds.
"""

from __future__ import annotations

import base64
import functools
import time

from starlette.requests import Request

from notaflow.store import Tenant, TenantStore


class TenantCache:
    def __init__(self, tenants: TenantStore, ttl: float = 10.0, size: int = 10_000) -> None:
        self._tenants = tenants
        self._ttl = ttl
        self._size = size
        self._entries: dict[str, tuple[float, Tenant | None]] = {}

    async def lookup(self, token: str) -> Tenant | None:
        # Keyed by the token itself, in memory only: hashing on every request is measurable on
        # the hot path, and the database still only ever sees hashes.
        key = token
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        tenant = await self._tenants.by_token(token)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = (now + self._ttl, tenant)
        return tenant


def basic_token(request: Request) -> str | None:
    """The Basic user name (Focus's token), or None when there are no usable credentials."""
    return _basic_user(request.headers.get("authorization", ""))


@functools.lru_cache(maxsize=4096)
def _basic_user(header: str) -> str | None:
    # Cached: clients send the same header on every request, and decoding it each time was
    # visible in the ingress profile.
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII (latin-1) text
        return None
    user, _, _password = decoded.partition(":")
    return user or None
