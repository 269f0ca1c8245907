"""Tenant authentication. Focus dialect: HTTP Basic with the token as user, empty password.

Token lookups hit the database once per token per TTL; a revoked token stops working within
`ttl` seconds.

Memory is bounded whatever clients send (issue 19): a credential longer than `MAX_TOKEN_CHARS`
is refused before any lookup (our tokens are 43 characters), the caches are keyed by a 16-byte
digest of the token, never by the token, and hold a bounded number of entries; unknown tokens
are remembered only briefly (`unknown_ttl`), so a flood of made-up credentials costs one query
each per second at most and no lasting memory.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from notaflow.cache import SharedLoadCache
from notaflow.store import Tenant, TenantStore

# Longest token looked up. Tokens notaflow issues are 43 characters; a few hundred leaves room
# for imported ones and refuses the megabyte credentials that used to fill the caches.
MAX_TOKEN_CHARS = 256
# Longest Authorization value whose decoding is cached: Basic of a MAX_TOKEN_CHARS token.
_MAX_CACHED_HEADER = 16 + 4 * (MAX_TOKEN_CHARS * 4 + 2) // 3


def token_key(token: str) -> bytes:
    """What the caches key a token by: BLAKE2b-128 (about 0.3 µs), so an entry costs 16 bytes
    of key whatever the client sent, and a memory dump holds no usable credential."""
    return hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class TenantCache:
    """Tenants by token. Concurrent lookups of one token share a single query: when an entry
    expires under load, every request in flight would otherwise miss at once and each run the
    two queries (7 % of the ingress's profile at 64 connections). A revoked token stops
    working within `ttl` seconds."""

    def __init__(
        self,
        tenants: TenantStore,
        ttl: float = 10.0,
        size: int = 10_000,
        unknown_ttl: float = 1.0,
    ) -> None:
        self._tenants = tenants
        self._cache: SharedLoadCache[bytes, Tenant | None] = SharedLoadCache(
            self._no_loader,
            ttl,
            size,
            ttl_of=lambda tenant: ttl if tenant is not None else unknown_ttl,
        )

    async def lookup(self, token: str) -> Tenant | None:
        if len(token) > MAX_TOKEN_CHARS:
            return None  # answered like an unknown token, without a query or a cache entry
        return await self._cache.get(token_key(token), load=lambda: self._tenants.by_token(token))

    @staticmethod
    async def _no_loader(key: bytes) -> Tenant | None:
        raise AssertionError("every lookup brings its loader")


def basic_user(authorization: str) -> str | None:
    """The Basic user name (Focus's token) of an Authorization header's value, or None when
    there are no usable credentials."""
    if len(authorization) > _MAX_CACHED_HEADER:
        # Not remembered: the decoding cache would keep whatever size clients send.
        return _decode_basic(authorization)
    return _basic_user(authorization)


@functools.lru_cache(maxsize=4096)
def _basic_user(header: str) -> str | None:
    # Cached: clients send the same header on every request, and decoding it each time was
    # visible in the ingress profile. Only short values come here (4096 x ~370 bytes at most).
    return _decode_basic(header)


def _decode_basic(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, or non-ASCII (latin-1) text
        return None
    user, _, _password = decoded.partition(":")
    return user or None
