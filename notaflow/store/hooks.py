"""Client webhooks (Focus's gatilhos): at most five per company and event, soft-deleted."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.store.tables import hooks

MAX_PER_COMPANY_AND_EVENT = 5
_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Hook:
    id: str
    tenant_id: str
    cnpj: str | None
    cpf: str | None
    event: str
    url: str
    authorization: str | None
    authorization_header: str | None
    signing_secret: str
    deleted: bool

    def public(self) -> dict[str, Any]:
        """What Focus answers for a hook, plus the secret receivers verify signatures with."""
        body: dict[str, Any] = {"id": self.id}
        if self.cpf:
            body["cpf"] = self.cpf
        else:
            body["cnpj"] = self.cnpj
        body.update(
            url=self.url,
            authorization=self.authorization,
            authorization_header=self.authorization_header,
            event=self.event,
            signing_secret=self.signing_secret,
        )
        if self.deleted:
            body["deleted"] = True
        return body


class TooManyHooks(Exception):
    pass


def _hook(row: sa.Row[Any]) -> Hook:
    m = row._mapping
    return Hook(
        id=m["id"],
        tenant_id=m["tenant_id"],
        cnpj=m["cnpj"],
        cpf=m["cpf"],
        event=m["event"],
        url=m["url"],
        authorization=m["authorization"],
        authorization_header=m["authorization_header"],
        signing_secret=m["signing_secret"],
        deleted=m["deleted_at"] is not None,
    )


class HookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        tenant_id: str,
        event: str,
        url: str,
        signing_secret: str,
        cnpj: str | None = None,
        cpf: str | None = None,
        authorization: str | None = None,
        authorization_header: str | None = None,
    ) -> Hook:
        hook_id = "".join(secrets.choice(_ALPHABET) for _ in range(8))
        async with self._engine.begin() as conn:
            same = (
                (hooks.c.tenant_id == tenant_id)
                & (hooks.c.event == event)
                & hooks.c.deleted_at.is_(None)
                & (hooks.c.cnpj == cnpj if cnpj else hooks.c.cnpj.is_(None))
                & (hooks.c.cpf == cpf if cpf else hooks.c.cpf.is_(None))
            )
            count = await conn.scalar(sa.select(sa.func.count()).select_from(hooks).where(same))
            if (count or 0) >= MAX_PER_COMPANY_AND_EVENT:
                raise TooManyHooks
            await conn.execute(
                hooks.insert().values(
                    id=hook_id,
                    tenant_id=tenant_id,
                    cnpj=cnpj,
                    cpf=cpf,
                    event=event,
                    url=url,
                    authorization=authorization,
                    authorization_header=authorization_header,
                    signing_secret=signing_secret,
                    created_at=datetime.now(UTC),
                )
            )
        hook = await self.get(tenant_id, hook_id)
        assert hook is not None
        return hook

    async def get(self, tenant_id: str, hook_id: str) -> Hook | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(hooks).where(hooks.c.tenant_id == tenant_id, hooks.c.id == hook_id)
                )
            ).first()
        return _hook(row) if row is not None else None

    async def all(self, tenant_id: str) -> list[Hook]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(hooks)
                    .where(hooks.c.tenant_id == tenant_id, hooks.c.deleted_at.is_(None))
                    .order_by(hooks.c.created_at, hooks.c.id)
                )
            ).all()
        return [_hook(r) for r in rows]

    async def delete(self, tenant_id: str, hook_id: str) -> Hook | None:
        async with self._engine.begin() as conn:
            await conn.execute(
                hooks.update()
                .where(
                    hooks.c.tenant_id == tenant_id,
                    hooks.c.id == hook_id,
                    hooks.c.deleted_at.is_(None),
                )
                .values(deleted_at=datetime.now(UTC))
            )
        return await self.get(tenant_id, hook_id)

    async def matching(self, tenant_id: str, event: str, cnpj: str) -> list[Hook]:
        """Hooks that fire for a document of `cnpj`: the company's and the token-wide ones."""
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(hooks)
                    .where(
                        hooks.c.tenant_id == tenant_id,
                        hooks.c.event == event,
                        hooks.c.deleted_at.is_(None),
                        sa.or_(
                            hooks.c.cnpj == cnpj,
                            sa.and_(hooks.c.cnpj.is_(None), hooks.c.cpf.is_(None)),
                        ),
                    )
                    .order_by(hooks.c.created_at, hooks.c.id)
                )
            ).all()
        return [_hook(r) for r in rows]
