"""Provider accounts in the database (table `provider_accounts`), secrets sealed by a
`SecretBox`. The pure rules (fields, resolution) are in notaflow/accounts.py."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.account_keys import SecretBox
from notaflow.accounts import (
    ANY_CNPJ,
    Account,
    AccountResolver,
    InvalidAccount,
    Provider,
    check_account,
)
from notaflow.errors import ConfigurationError, StoreError
from notaflow.settings import Settings
from notaflow.store.tables import provider_accounts, tenant_companies, tenants


class AccountExists(StoreError):
    retriable = False


def _no_keys() -> ConfigurationError:
    return ConfigurationError(
        "provider account secrets need a key: set NOTAFLOW_ACCOUNT_KEYS "
        "(`notaflow account new-key` prints one)"
    )


class AccountStore:
    """Accounts by (tenant, CNPJ, provider). `box` is None when no key is configured: accounts
    without a secret (Emites endpoints) still work, and one with a secret says what to set."""

    def __init__(self, engine: AsyncEngine, box: SecretBox | None) -> None:
        self._engine = engine
        self._box = box

    def _seal(self, secret: str | None) -> str | None:
        if not secret:
            return None
        if self._box is None:
            raise _no_keys()
        return self._box.encrypt(secret)

    def _open(self, sealed: str | None) -> str | None:
        if sealed is None:
            return None
        if self._box is None:
            raise _no_keys()
        return self._box.decrypt(sealed)

    @staticmethod
    def _key(tenant: str, cnpj: str, provider: Provider) -> sa.ColumnElement[bool]:
        c = provider_accounts.c
        return sa.and_(c.tenant_id == tenant, c.cnpj == cnpj, c.provider == str(provider))

    async def create(
        self,
        tenant: str,
        cnpj: str,
        provider: Provider,
        config: Mapping[str, Any],
        secret: str | None = None,
    ) -> Account:
        """A new account of one of the tenant's companies (or `ANY_CNPJ`). Refused
        (`InvalidAccount`) for an unknown tenant or a CNPJ the tenant may not emit for, and
        (`AccountExists`) when the company has one at this provider: `rotate` replaces it."""
        clean = check_account(provider, cnpj, config, secret)
        sealed = self._seal(secret)
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            if await conn.scalar(sa.select(tenants.c.id).where(tenants.c.id == tenant)) is None:
                raise InvalidAccount(f"unknown tenant {tenant!r}")
            if cnpj != ANY_CNPJ:
                known = await conn.scalar(
                    sa.select(tenant_companies.c.cnpj).where(
                        tenant_companies.c.tenant_id == tenant, tenant_companies.c.cnpj == cnpj
                    )
                )
                if known is None:
                    raise InvalidAccount(f"tenant {tenant!r} has no company {cnpj}")
            have = await conn.scalar(
                sa.select(provider_accounts.c.cnpj).where(self._key(tenant, cnpj, provider))
            )
            if have is not None:
                raise AccountExists(
                    f"tenant {tenant!r} already has a {provider} account for {cnpj}"
                )
            try:
                await conn.execute(
                    provider_accounts.insert().values(
                        tenant_id=tenant,
                        cnpj=cnpj,
                        provider=str(provider),
                        config=clean,
                        secret=sealed,
                        created_at=now,
                        updated_at=now,
                    )
                )
            except sa.exc.IntegrityError as exc:  # a concurrent create of the same account
                raise AccountExists(
                    f"tenant {tenant!r} already has a {provider} account for {cnpj}"
                ) from exc
        return Account(tenant, cnpj, provider, clean, secret, now, now, None, sealed is not None)

    async def get(self, tenant: str, cnpj: str, provider: Provider) -> Account | None:
        row = await self._row(tenant, cnpj, provider)
        return None if row is None else _account(row, self._open(row.secret))

    async def _row(self, tenant: str, cnpj: str, provider: Provider) -> Any:
        async with self._engine.connect() as conn:
            return (
                await conn.execute(
                    sa.select(provider_accounts).where(self._key(tenant, cnpj, provider))
                )
            ).first()

    def sealed(self) -> SealedAccounts:
        """A lookup that leaves secrets sealed: for the ingress's door check, which only asks
        whether an account is disabled and so never holds a decrypted secret (nor a key)."""
        return SealedAccounts(self)

    async def list(self, tenant: str | None = None) -> list[Account]:
        """Every account (of one tenant), secrets left sealed and out (`secret` is None)."""
        query = sa.select(provider_accounts).order_by(
            provider_accounts.c.tenant_id, provider_accounts.c.cnpj, provider_accounts.c.provider
        )
        if tenant is not None:
            query = query.where(provider_accounts.c.tenant_id == tenant)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_account(row, None) for row in rows]

    async def rotate(
        self,
        tenant: str,
        cnpj: str,
        provider: Provider,
        secret: str | None,
        config: Mapping[str, Any] | None = None,
    ) -> bool:
        """Replace the account's secret and/or its config; None keeps what is there (a new
        SMTP host keeps its password). False if there is no such account."""
        current = await self.get(tenant, cnpj, provider)
        if current is None:
            return False
        clean = check_account(
            provider,
            cnpj,
            current.config if config is None else config,
            current.secret if secret is None else secret,
        )
        values: dict[str, Any] = {"config": clean, "updated_at": datetime.now(UTC)}
        if secret is not None:
            values["secret"] = self._seal(secret)
        async with self._engine.begin() as conn:
            res = await conn.execute(
                provider_accounts.update().where(self._key(tenant, cnpj, provider)).values(values)
            )
        return bool(res.rowcount)

    async def disable(self, tenant: str, cnpj: str, provider: Provider) -> bool:
        return await self._set_disabled(tenant, cnpj, provider, datetime.now(UTC))

    async def enable(self, tenant: str, cnpj: str, provider: Provider) -> bool:
        return await self._set_disabled(tenant, cnpj, provider, None)

    async def _set_disabled(
        self, tenant: str, cnpj: str, provider: Provider, when: datetime | None
    ) -> bool:
        async with self._engine.begin() as conn:
            res = await conn.execute(
                provider_accounts.update()
                .where(self._key(tenant, cnpj, provider))
                .values(disabled_at=when, updated_at=datetime.now(UTC))
            )
        return bool(res.rowcount)

    async def reencrypt(self) -> tuple[int, int]:
        """Seal every secret with the newest key: (re-sealed, already current). A secret no
        key opens stops it with `SecretUnreadable` before anything is written."""
        if self._box is None:
            raise _no_keys()
        box = self._box
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        provider_accounts.c.tenant_id,
                        provider_accounts.c.cnpj,
                        provider_accounts.c.provider,
                        provider_accounts.c.secret,
                    ).where(provider_accounts.c.secret.is_not(None))
                )
            ).all()
            stale = [row for row in rows if not box.is_current(row.secret)]
            # Every secret re-sealed first: one unreadable row leaves the table untouched.
            resealed = [(row, box.reseal(row.secret)) for row in stale]
            for row, sealed in resealed:
                # Only if unchanged since read: a rotate racing this keeps its new secret.
                await conn.execute(
                    provider_accounts.update()
                    .where(
                        self._key(row.tenant_id, row.cnpj, Provider(row.provider)),
                        provider_accounts.c.secret == row.secret,
                    )
                    .values(secret=sealed)
                )
        return len(resealed), len(rows) - len(resealed)


class SealedAccounts:
    def __init__(self, store: AccountStore) -> None:
        self._store = store

    async def get(self, tenant: str, cnpj: str, provider: Provider) -> Account | None:
        row = await self._store._row(tenant, cnpj, provider)
        return None if row is None else _account(row, None)


def _account(row: Any, secret: str | None) -> Account:
    return Account(
        tenant=row.tenant_id,
        cnpj=row.cnpj,
        provider=Provider(row.provider),
        config=dict(row.config),
        secret=secret,
        created_at=row.created_at,
        updated_at=row.updated_at,
        disabled_at=row.disabled_at,
        has_secret=row.secret is not None,
    )


def secret_box(settings: Settings) -> SecretBox | None:
    """The box of NOTAFLOW_ACCOUNT_KEYS, or None when no key is set (single-company installs
    and `notaflow dev` need none)."""
    keys = settings.account_keys
    return SecretBox.from_setting(keys) if keys.strip() else None


def account_resolver(engine: AsyncEngine, settings: Settings) -> AccountResolver:
    """A process's `account_for`: the accounts table, secrets opened, cached per the settings."""
    store = AccountStore(engine, secret_box(settings))
    return AccountResolver(store, settings, settings.account_cache_ttl)
