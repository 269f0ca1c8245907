"""Operator tokens of the admin API (/admin/v1): random, shown once, stored as SHA-256 like
the tenants' tokens (notaflow/store/tenants.py), in a table of their own."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.store.tables import operator_tokens
from notaflow.store.tenants import hash_token, new_token


class OperatorStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(self, label: str) -> str:
        """A new operator token: the only time its plaintext is seen."""
        token = new_token()
        async with self._engine.begin() as conn:
            await conn.execute(
                operator_tokens.insert().values(
                    token_hash=hash_token(token), label=label, created_at=datetime.now(UTC)
                )
            )
        return token

    async def label_of(self, token: str) -> str | None:
        """The label of a valid (unrevoked) token, or None."""
        async with self._engine.connect() as conn:
            return await conn.scalar(
                sa.select(operator_tokens.c.label).where(
                    operator_tokens.c.token_hash == hash_token(token),
                    operator_tokens.c.revoked_at.is_(None),
                )
            )

    async def revoke(self, token: str) -> bool:
        async with self._engine.begin() as conn:
            res = await conn.execute(
                operator_tokens.update()
                .where(
                    operator_tokens.c.token_hash == hash_token(token),
                    operator_tokens.c.revoked_at.is_(None),
                )
                .values(revoked_at=datetime.now(UTC))
            )
        return bool(res.rowcount)
