"""Tenants, their API tokens (stored hashed) and the companies (CNPJs) they may emit for."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.cache import SharedLoadCache
from notaflow.store.tables import tenant_companies, tenant_tokens, tenants


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    cnpjs: frozenset[str]


class TenantStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self, tenant_id: str, name: str, cnpjs: list[str], token: str | None = None
    ) -> str:
        """Create (or update) a tenant with its companies and return a new plaintext token:
        the only time it is ever seen."""
        token = token or new_token()
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            exists = await conn.scalar(sa.select(tenants.c.id).where(tenants.c.id == tenant_id))
            if exists is None:
                await conn.execute(tenants.insert().values(id=tenant_id, name=name, created_at=now))
            for cnpj in cnpjs:
                have = await conn.scalar(
                    sa.select(tenant_companies.c.cnpj).where(
                        tenant_companies.c.tenant_id == tenant_id, tenant_companies.c.cnpj == cnpj
                    )
                )
                if have is None:
                    await conn.execute(
                        tenant_companies.insert().values(tenant_id=tenant_id, cnpj=cnpj)
                    )
            h = hash_token(token)
            if (
                await conn.scalar(
                    sa.select(tenant_tokens.c.token_hash).where(tenant_tokens.c.token_hash == h)
                )
                is None
            ):
                await conn.execute(
                    tenant_tokens.insert().values(
                        token_hash=h, tenant_id=tenant_id, label="api", created_at=now
                    )
                )
        return token

    async def by_token(self, token: str) -> Tenant | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(tenants.c.id, tenants.c.name)
                    .join(tenant_tokens, tenant_tokens.c.tenant_id == tenants.c.id)
                    .where(
                        tenant_tokens.c.token_hash == hash_token(token),
                        tenant_tokens.c.revoked_at.is_(None),
                    )
                )
            ).first()
            if row is None:
                return None
            cnpjs = (
                await conn.scalars(
                    sa.select(tenant_companies.c.cnpj).where(tenant_companies.c.tenant_id == row.id)
                )
            ).all()
        return Tenant(id=row.id, name=row.name, cnpjs=frozenset(cnpjs))

    async def get(self, tenant_id: str) -> Tenant | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id))).first()
            if row is None:
                return None
            cnpjs = (
                await conn.scalars(
                    sa.select(tenant_companies.c.cnpj).where(
                        tenant_companies.c.tenant_id == tenant_id
                    )
                )
            ).all()
        return Tenant(id=row.id, name=row.name, cnpjs=frozenset(cnpjs))

    async def revoke(self, token: str) -> bool:
        async with self._engine.begin() as conn:
            res = await conn.execute(
                tenant_tokens.update()
                .where(tenant_tokens.c.token_hash == hash_token(token))
                .values(revoked_at=datetime.now(UTC))
            )
        return bool(res.rowcount)


class TenantCache:
    """`TenantStore.get` for a consumer's hot path: tenants change rarely and every command
    names one, so a lookup is reused for `ttl` seconds and concurrent lookups of one tenant
    share a single query. An unknown tenant is never cached (one created a moment ago is found
    at once), and `fresh` re-reads past the cache, for a caller about to refuse a command
    because of what the cached copy says (a company added a moment ago is found at once)."""

    def __init__(
        self,
        store: TenantStore,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache: SharedLoadCache[str, Tenant | None] = SharedLoadCache(
            store.get, ttl, keep=lambda tenant: tenant is not None, clock=clock
        )

    async def get(self, tenant_id: str, fresh: bool = False) -> Tenant | None:
        return await self._cache.get(tenant_id, fresh)
