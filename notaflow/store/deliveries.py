"""Notification deliveries (e-mail, webhook): one row per thing to deliver, keyed so that a
redelivered Kafka record finds the row it already made; every attempt recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.store.clock import as_utc as _utc
from notaflow.store.clock import now as _now
from notaflow.store.tables import deliveries, delivery_attempts

PENDING = "pending"
SENT = "sent"
FAILED = "failed"


@dataclass(frozen=True)
class Delivery:
    id: int
    tenant_id: str
    document_id: int
    channel: str
    dedupe_key: str
    target: str
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None


def _delivery(row: sa.Row[Any]) -> Delivery:
    m = row._mapping
    return Delivery(
        id=m["id"],
        tenant_id=m["tenant_id"],
        document_id=m["document_id"],
        channel=m["channel"],
        dedupe_key=m["dedupe_key"],
        target=m["target"],
        payload=m["payload"],
        status=m["status"],
        attempts=m["attempts"],
        next_attempt_at=_utc(m["next_attempt_at"]),
        last_error=m["last_error"],
    )


class DeliveryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def ensure(
        self,
        tenant_id: str,
        document_id: int,
        channel: str,
        dedupe_key: str,
        target: str,
        payload: dict[str, Any],
    ) -> Delivery:
        """The delivery for `dedupe_key`, created pending if it is new."""
        delivery, _ = await self.ensure_locked(
            tenant_id, document_id, channel, dedupe_key, target, payload, None
        )
        return delivery

    async def ensure_locked(
        self,
        tenant_id: str,
        document_id: int,
        channel: str,
        dedupe_key: str,
        target: str,
        payload: dict[str, Any],
        lock_seconds: float | None,
    ) -> tuple[Delivery, bool]:
        """The delivery for `dedupe_key` and whether this call created it. A new row comes back
        from the insert itself, and with `lock_seconds` it is created locked for that long, as
        `lock` would leave it: the creator attempts it at once without another write, and a
        replica's retry pass cannot take it meanwhile. An existing row (a redelivery) is read
        and returned as it is, not locked."""
        now = _now()
        try:
            async with self._engine.begin() as conn:
                row = (
                    await conn.execute(
                        deliveries.insert()
                        .values(
                            tenant_id=tenant_id,
                            document_id=document_id,
                            channel=channel,
                            dedupe_key=dedupe_key,
                            target=target,
                            payload=payload,
                            status=PENDING,
                            attempts=0,
                            next_attempt_at=now,
                            locked_until=(
                                None
                                if lock_seconds is None
                                else now + timedelta(seconds=lock_seconds)
                            ),
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(*deliveries.c)
                    )
                ).first()
            if row is not None:
                return _delivery(row), True
        except IntegrityError:
            pass  # already there: this is a redelivery
        found = await self.by_key(dedupe_key)
        assert found is not None
        return found, False

    async def by_key(self, dedupe_key: str) -> Delivery | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(deliveries).where(deliveries.c.dedupe_key == dedupe_key)
                )
            ).first()
        return _delivery(row) if row is not None else None

    async def lock(self, delivery_id: int, seconds: float) -> bool:
        """Take a pending delivery that is due for `seconds` (several consumer replicas may see
        it). Not before its retry time: a redelivered record must not bring a failed delivery's
        next attempt forward (the receiver would see the schedule ignored)."""
        now = _now()
        async with self._engine.begin() as conn:
            res = await conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.id == delivery_id,
                    deliveries.c.status == PENDING,
                    sa.or_(
                        deliveries.c.next_attempt_at.is_(None),
                        deliveries.c.next_attempt_at <= now,
                    ),
                    sa.or_(deliveries.c.locked_until.is_(None), deliveries.c.locked_until < now),
                )
                .values(locked_until=now + timedelta(seconds=seconds), updated_at=now)
            )
        return res.rowcount == 1

    async def due(
        self, limit: int = 50, channels: tuple[str, ...] = ("email", "webhook")
    ) -> list[Delivery]:
        """Pending deliveries whose retry time has come, of the channels the caller handles."""
        now = _now()
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(deliveries)
                    .where(
                        deliveries.c.status == PENDING,
                        deliveries.c.channel.in_(channels),
                        deliveries.c.next_attempt_at <= now,
                        sa.or_(
                            deliveries.c.locked_until.is_(None), deliveries.c.locked_until < now
                        ),
                    )
                    .order_by(deliveries.c.next_attempt_at)
                    .limit(limit)
                )
            ).all()
        return [_delivery(r) for r in rows]

    async def record(
        self,
        delivery_id: int,
        ok: bool,
        code: int | None,
        message: str | None,
        host: str | None,
        next_attempt_at: datetime | None,
    ) -> None:
        """One attempt: `ok` ends it as sent; otherwise pending again at `next_attempt_at`,
        or failed for good when that is None."""
        now = _now()
        status = SENT if ok else (PENDING if next_attempt_at is not None else FAILED)
        async with self._engine.begin() as conn:
            await conn.execute(
                delivery_attempts.insert().values(
                    delivery_id=delivery_id, at=now, ok=ok, code=code, message=message, host=host
                )
            )
            await conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id)
                .values(
                    status=status,
                    attempts=deliveries.c.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    locked_until=None,
                    last_error=None if ok else message,
                    updated_at=now,
                )
            )

    async def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(delivery_attempts)
                    .where(delivery_attempts.c.delivery_id == delivery_id)
                    .order_by(delivery_attempts.c.id)
                )
            ).all()
        return [dict(r._mapping) for r in rows]
