"""Notification deliveries (e-mail, webhook): one row per thing to deliver, keyed so that a
redelivered Kafka record finds the row it already made; every attempt recorded.

The notification consumer's two writes per delivery (`ensure_locked` when a record asks for
it, `record` after each attempt) go through group batches on the driver, like the emission
consumer's document writes (notaflow/store/documents.py): what concurrent handlers ask for in
the same moment is one inline SQLite transaction or one PostgreSQL round trip, not a pooled
SQLAlchemy connection, a thread hop per statement and a commit each. Each caller still gets
its own answer, after the commit."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.batcher import GroupBatcher
from notaflow.store.clock import as_utc as _utc
from notaflow.store.clock import now as _now
from notaflow.store.documents.sqlite import BatchConnection, text_time
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


@dataclass(frozen=True)
class _Ensure:
    tenant_id: str
    document_id: int
    channel: str
    dedupe_key: str
    target: str
    payload: str  # JSON text, serialized by the caller's own call
    lock_seconds: float | None


@dataclass(frozen=True)
class _Record:
    delivery_id: int
    ok: bool
    code: int | None
    message: str | None
    host: str | None
    next_attempt_at: datetime | None

    @property
    def status(self) -> str:
        return SENT if self.ok else (PENDING if self.next_attempt_at is not None else FAILED)


# How long a busy store's delivery batch waits for company. A note's deliveries come one at a
# time (the notification consumer's e-mails are paced by its SMTP server): without it 97 % of
# the batches held one item, four transactions per note. `bin/bench pipeline`, SQLite: the
# notification consumer's CPU 2.35 -> 2.03 ms per note at 2 ms, 1.85 at 5; it delays a
# delivery's bookkeeping by that much, only while busy (`GroupBatcher`).
LINGER = 0.005


class DeliveryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        sqlite = (engine.url.database or "") if engine.dialect.name == "sqlite" else None
        # One connection per batcher: each is used by one batch at a time (see BatchConnection).
        self._sqlite_ensure = BatchConnection(sqlite) if sqlite is not None else None
        self._sqlite_record = BatchConnection(sqlite) if sqlite is not None else None
        self._ensures: GroupBatcher[_Ensure, tuple[Delivery, bool]] = GroupBatcher(
            self._ensure_many, linger=LINGER
        )
        self._records: GroupBatcher[_Record, None] = GroupBatcher(self._record_many, linger=LINGER)
        self._writers = [w for w in (self._sqlite_ensure, self._sqlite_record) if w is not None]

    def close(self) -> None:
        """Close the batches' own SQLite connections (nothing to do on PostgreSQL)."""
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()

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
        # Serialized here, not in the batch: a payload orjson refuses fails its caller only.
        item = _Ensure(
            tenant_id, document_id, channel, dedupe_key, target,
            orjson.dumps(payload).decode(), lock_seconds,
        )  # fmt: skip
        return await self._ensures.submit(item)

    async def _ensure_many(self, items: list[_Ensure]) -> list[tuple[Delivery, bool]]:
        now = _now()
        if self._sqlite_ensure is not None:
            return await self._sqlite_ensure.run(_sqlite_ensure, items, now)
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            return await _pg_ensure(raw.driver_connection, items, now)

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

    async def renew(self, delivery_ids: Sequence[int], seconds: float) -> set[int]:
        """Extend to `seconds` from now the locks of `delivery_ids` that still hold (pending,
        locked into the future); the ids extended. A lock renewed before it ran out was never
        free, so it is still the renewer's: nobody else could have taken it."""
        if not delivery_ids:
            return set()
        now = _now()
        async with self._engine.begin() as conn:
            rows = await conn.execute(
                deliveries.update()
                .where(
                    deliveries.c.id.in_(list(delivery_ids)),
                    deliveries.c.status == PENDING,
                    deliveries.c.locked_until >= now,
                )
                .values(locked_until=now + timedelta(seconds=seconds), updated_at=now)
                .returning(deliveries.c.id)
            )
            return {int(row[0]) for row in rows}

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
        item = _Record(delivery_id, ok, code, message, host, next_attempt_at)
        await self._records.submit(item)

    async def _record_many(self, items: list[_Record]) -> list[None]:
        now = _now()
        if self._sqlite_record is not None:
            await self._sqlite_record.run(_sqlite_record, items, now)
        else:
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                await _pg_record(raw.driver_connection, items, now)
        return [None] * len(items)

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


# -- the batches on the driver -----------------------------------------------------------------

_COLUMNS = (
    "id, tenant_id, document_id, channel, dedupe_key, target, payload, status, attempts, "
    "next_attempt_at, last_error"
)
_INSERT_COLUMNS = (
    "tenant_id, document_id, channel, dedupe_key, target, payload, status, attempts, "
    "next_attempt_at, locked_until, created_at, updated_at"
)


def _raw_delivery(row: Sequence[Any]) -> Delivery:
    """A Delivery from a driver row in `_COLUMNS` order: the payload as JSON text, the time as
    SQLite's text (SQLAlchemy's storage format) or asyncpg's datetime."""
    at = row[9]
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return Delivery(
        id=row[0],
        tenant_id=row[1],
        document_id=row[2],
        channel=row[3],
        dedupe_key=row[4],
        target=row[5],
        payload=orjson.loads(row[6]),
        status=row[7],
        attempts=row[8],
        next_attempt_at=_utc(at),
        last_error=row[10],
    )


def _sqlite_ensure(
    conn: sqlite3.Connection, items: list[_Ensure], now: datetime
) -> list[tuple[Delivery, bool]]:
    # In arrival order, one insert each: a key asked for twice in one batch is created by the
    # first and found by the second, as the one-by-one calls did.
    at = text_time(now)
    insert = (
        f"INSERT INTO deliveries ({_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?) "
        f"ON CONFLICT (dedupe_key) DO NOTHING RETURNING {_COLUMNS}"
    )
    out: list[tuple[Delivery, bool]] = []
    for e in items:
        locked = (
            None if e.lock_seconds is None else text_time(now + timedelta(seconds=e.lock_seconds))
        )
        row = conn.execute(
            insert,
            (e.tenant_id, e.document_id, e.channel, e.dedupe_key, e.target, e.payload, PENDING,
             at, locked, at, at),
        ).fetchone()  # fmt: skip
        if row is not None:
            out.append((_raw_delivery(row), True))
            continue
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM deliveries WHERE dedupe_key = ?", (e.dedupe_key,)
        ).fetchone()
        out.append((_raw_delivery(row), False))
    return out


async def _pg_ensure(
    driver: Any, items: list[_Ensure], now: datetime
) -> list[tuple[Delivery, bool]]:
    """asyncpg: the batch as arrays in one INSERT; the keys that were there already (a
    redelivery) read in a second round trip. Within one statement a key asked for twice is
    inserted once (ON CONFLICT DO NOTHING skips the second)."""
    rows = await driver.fetch(
        f"INSERT INTO deliveries ({_INSERT_COLUMNS}) "
        "SELECT t, d, c, k, g, p, $7::text, 0, $8::timestamptz, l, $8, $8 "
        "FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], "
        "$9::timestamptz[]) "
        "WITH ORDINALITY AS u(t, d, c, k, g, p, l, n) ORDER BY n "
        f"ON CONFLICT (dedupe_key) DO NOTHING RETURNING {_COLUMNS}",
        [e.tenant_id for e in items],
        [e.document_id for e in items],
        [e.channel for e in items],
        [e.dedupe_key for e in items],
        [e.target for e in items],
        [e.payload for e in items],
        PENDING,
        now,
        [None if e.lock_seconds is None else now + timedelta(seconds=e.lock_seconds)
         for e in items],
    )  # fmt: skip
    created = {row[4]: _raw_delivery(row) for row in rows}
    missing = list({e.dedupe_key for e in items if e.dedupe_key not in created})
    found: dict[str, Delivery] = {}
    if missing:
        for row in await driver.fetch(
            f"SELECT {_COLUMNS} FROM deliveries WHERE dedupe_key = ANY($1::text[])", missing
        ):
            found[row[4]] = _raw_delivery(row)
    out: list[tuple[Delivery, bool]] = []
    for e in items:
        mine = created.pop(e.dedupe_key, None)  # the first asking for a new key created it
        if mine is not None:
            found[e.dedupe_key] = mine
            out.append((mine, True))
        else:
            out.append((found[e.dedupe_key], False))
    return out


def _sqlite_record(conn: sqlite3.Connection, items: list[_Record], now: datetime) -> None:
    at = text_time(now)
    conn.executemany(
        "INSERT INTO delivery_attempts (delivery_id, at, ok, code, message, host) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(r.delivery_id, at, r.ok, r.code, r.message, r.host) for r in items],
    )
    conn.executemany(
        "UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt_at = ?, "
        "locked_until = NULL, last_error = ?, updated_at = ? WHERE id = ?",
        [
            (
                r.status,
                None if r.next_attempt_at is None else text_time(r.next_attempt_at),
                None if r.ok else r.message,
                at,
                r.delivery_id,
            )
            for r in items
        ],
    )


# The attempts and the deliveries' new state in one statement (so one round trip, atomic).
_PG_RECORD = (
    "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::bool[], $3::int[], $4::text[], "
    "$5::text[], $6::text[], $7::timestamptz[]) AS u(i, ok, code, msg, host, st, next_at)), "
    "a AS (INSERT INTO delivery_attempts (delivery_id, at, ok, code, message, host) "
    "SELECT i, $8::timestamptz, ok, code, msg, host FROM u) "
    "UPDATE deliveries d SET status = u.st, attempts = d.attempts + 1, "
    "next_attempt_at = u.next_at, locked_until = NULL, "
    "last_error = CASE WHEN u.ok THEN NULL ELSE u.msg END, updated_at = $8 "
    "FROM u WHERE d.id = u.i"
)


async def _pg_record(driver: Any, items: list[_Record], now: datetime) -> None:
    """asyncpg: the batch as arrays. UPDATE ... FROM applies one row per delivery, so a
    delivery recorded twice in one batch (its attempts counted once each) goes in rounds."""
    rounds: list[list[_Record]] = []
    seen: dict[int, int] = {}
    for r in items:  # a delivery's n-th record of the batch goes in round n
        n = seen.get(r.delivery_id, 0)
        seen[r.delivery_id] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(r)

    async def run(batch: list[_Record]) -> None:
        await driver.execute(
            _PG_RECORD,
            [r.delivery_id for r in batch],
            [r.ok for r in batch],
            [r.code for r in batch],
            [r.message for r in batch],
            [r.host for r in batch],
            [r.status for r in batch],
            [r.next_attempt_at for r in batch],
            now,
        )

    if len(rounds) == 1:
        await run(rounds[0])
        return
    async with driver.transaction():
        for batch in rounds:
            await run(batch)
