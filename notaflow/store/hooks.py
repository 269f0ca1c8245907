"""Client webhooks (Focus's gatilhos): at most five per company and event, soft-deleted, and
disabled when they fail most deliveries for 7 days (`hook_is_failing`)."""

from __future__ import annotations

import secrets
import sqlite3
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.batcher import GroupBatcher
from notaflow.errors import StoreError
from notaflow.store.clock import as_utc
from notaflow.store.documents.sqlite import BatchConnection
from notaflow.store.tables import deliveries, delivery_attempts, hooks

MAX_PER_COMPANY_AND_EVENT = 5
_ALPHABET = string.ascii_letters + string.digits

HEALTH_WINDOW = timedelta(days=7)
HEALTH_EDGE = timedelta(days=1)
# Literal, not a bound parameter: the planners match it to ix_deliveries_hook_recent's predicate.
_WEBHOOK: sa.ColumnClause[str] = sa.literal_column("'webhook'", sa.String())


class Attempt(NamedTuple):
    delivery_id: int
    at: datetime
    ok: bool


def hook_is_failing(attempts: Iterable[Attempt], now: datetime) -> bool:
    """Whether a hook "fails most deliveries for 7 days" (Focus's words), judged at `now` over
    its delivery attempts (aware datetimes, any order; attempts outside the window ignored).

    The window is the last 7 days: attempts at most 7 days old (`at >= now - 7d`). A delivery
    attempted in the window counts as failed when its latest attempt in the window failed (on
    equal times, a success wins); one that failed and then got through is a success, and its
    failed attempts count for nothing below. The hook is failing when both:

    (a) more than half of the deliveries attempted in the window failed (half is not enough);
    (b) the failures span the week: a failed delivery has a failed attempt in the window's
        first day (more than 6 days old: `now - 7d <= at < now - 6d`), and a failed delivery
        has one in its last day (`at > now - 1d`; attempts stamped after `now`, by a replica
        whose clock runs ahead, count as the last day's). Normally two deliveries: retries
        last about a day.

    So a hook with successes in between is still disabled if most deliveries failed, and one
    without a failed attempt more than 6 days old (younger, or not attempted that long ago) is
    never disabled. Adding a successful delivery never turns a hook failing.
    """
    start = now - HEALTH_WINDOW
    latest: dict[int, tuple[datetime, bool]] = {}
    first_day: set[int] = set()  # deliveries with a failed attempt in the window's first day
    last_day: set[int] = set()  # ... and in its last day
    for delivery_id, at, ok in attempts:
        if at < start:
            continue
        seen = latest.get(delivery_id)
        if seen is None or (at, ok) > seen:
            latest[delivery_id] = (at, ok)
        if not ok and at < start + HEALTH_EDGE:
            first_day.add(delivery_id)
        if not ok and at > now - HEALTH_EDGE:
            last_day.add(delivery_id)
    failed = {delivery_id for delivery_id, (_, ok) in latest.items() if not ok}
    return 2 * len(failed) > len(latest) and bool(failed & first_day) and bool(failed & last_day)


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
    disabled: bool

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
        if self.disabled:
            body["disabled"] = True
        return body


class TooManyHooks(StoreError):
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
        disabled=m["disabled_at"] is not None,
    )


class HookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # `matching` is read for every note the notification consumer delivers: in group
        # batches on the driver, like the document reads (notaflow/store/documents.py).
        sqlite = (engine.url.database or "") if engine.dialect.name == "sqlite" else None
        self._sqlite_reader = BatchConnection(sqlite) if sqlite is not None else None
        self._matching: GroupBatcher[tuple[str, str, str], list[Hook]] = GroupBatcher(
            self._matching_many, self._matching_now if sqlite is not None else None
        )

    def close(self) -> None:
        """Close the batches' own SQLite connection (nothing to do on PostgreSQL)."""
        reader, self._sqlite_reader = self._sqlite_reader, None
        if reader is not None:
            reader.close()

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
                & hooks.c.disabled_at.is_(None)  # the way to re-enable one is a new hook
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
        """The tenant's hooks, disabled ones included: the client sees why deliveries stopped."""
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
        return await self._matching.submit((tenant_id, event, cnpj))

    async def _matching_many(self, keys: list[tuple[str, str, str]]) -> list[list[Hook]]:
        if self._sqlite_reader is not None:
            return await self._sqlite_reader.run(_sqlite_matching, keys, transaction=False)
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            return await _pg_matching(raw.driver_connection, keys)

    def _matching_now(self, keys: list[tuple[str, str, str]]) -> list[list[Hook]] | None:
        assert self._sqlite_reader is not None
        return self._sqlite_reader.now(_sqlite_matching, keys, transaction=False)

    async def disable_if_failing(self, tenant_id: str, hook_id: str, now: datetime) -> bool:
        """Disable the hook if `hook_is_failing` judges its attempts of the last 7 days so at
        `now`. True only for the call that disabled it: two consumers judging the same hook at
        once race on a conditional UPDATE, and a deleted or disabled hook stays as it is."""
        now = now.astimezone(UTC)  # SQLite compares timestamps as UTC text
        since = now - HEALTH_WINDOW
        async with self._engine.connect() as conn:
            hook = (
                await conn.execute(
                    sa.select(hooks.c.created_at, hooks.c.deleted_at, hooks.c.disabled_at).where(
                        hooks.c.tenant_id == tenant_id, hooks.c.id == hook_id
                    )
                )
            ).first()
            if hook is None or hook.deleted_at is not None or hook.disabled_at is not None:
                return False
            # Younger than 6 days, it cannot have failed in the window's first day: no need to
            # read its attempts (this check runs after every failed attempt).
            if as_utc(hook.created_at) >= now - (HEALTH_WINDOW - HEALTH_EDGE):
                return False
            rows = (await conn.execute(_recent_attempts(tenant_id, hook_id, since))).all()
        attempts = [Attempt(r.delivery_id, as_utc(r.at), r.ok) for r in rows]
        if not hook_is_failing(attempts, now):
            return False
        async with self._engine.begin() as conn:
            res = await conn.execute(
                hooks.update()
                .where(
                    hooks.c.tenant_id == tenant_id,
                    hooks.c.id == hook_id,
                    hooks.c.deleted_at.is_(None),
                    hooks.c.disabled_at.is_(None),
                )
                .values(disabled_at=now)
            )
        return res.rowcount == 1


def _recent_attempts(tenant_id: str, hook_id: str, since: datetime) -> sa.Select[Any]:
    """The attempts since `since` of the hook's deliveries, found through
    ix_deliveries_hook_recent: every attempt sets its delivery's `updated_at`, so a delivery
    attempted since then was updated since then."""
    return (
        sa.select(delivery_attempts.c.delivery_id, delivery_attempts.c.at, delivery_attempts.c.ok)
        .select_from(
            deliveries.join(delivery_attempts, delivery_attempts.c.delivery_id == deliveries.c.id)
        )
        .where(
            deliveries.c.channel == _WEBHOOK,
            deliveries.c.target == hook_id,
            deliveries.c.updated_at >= since,
            deliveries.c.tenant_id == tenant_id,
            delivery_attempts.c.at >= since,
        )
    )


# "authorization" is a reserved word in PostgreSQL: quoted.
_COLUMNS = (
    'id, tenant_id, cnpj, cpf, event, url, "authorization", authorization_header, '
    "signing_secret, deleted_at, disabled_at"
)


def _raw_hook(row: Sequence[Any]) -> Hook:
    return Hook(
        id=row[0],
        tenant_id=row[1],
        cnpj=row[2],
        cpf=row[3],
        event=row[4],
        url=row[5],
        authorization=row[6],
        authorization_header=row[7],
        signing_secret=row[8],
        deleted=row[9] is not None,
        disabled=row[10] is not None,
    )


def _sqlite_matching(
    conn: sqlite3.Connection, keys: list[tuple[str, str, str]]
) -> list[list[Hook]]:
    # As `HookStore.matching` said it with SQLAlchemy: the company's and the token-wide hooks.
    sql = (
        f"SELECT {_COLUMNS} FROM hooks WHERE tenant_id = ? AND event = ? "
        "AND deleted_at IS NULL AND disabled_at IS NULL "
        "AND (cnpj = ? OR (cnpj IS NULL AND cpf IS NULL)) ORDER BY created_at, id"
    )
    return [[_raw_hook(row) for row in conn.execute(sql, key).fetchall()] for key in keys]


_PG_MATCHING = (
    "SELECT u.n, "
    + ", ".join("h." + c.strip() for c in _COLUMNS.split(","))
    + " FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(t, e, c, n) "
    "JOIN hooks h ON h.tenant_id = u.t AND h.event = u.e "
    "AND h.deleted_at IS NULL AND h.disabled_at IS NULL "
    "AND (h.cnpj = u.c OR (h.cnpj IS NULL AND h.cpf IS NULL)) "
    "ORDER BY u.n, h.created_at, h.id"
)


async def _pg_matching(driver: Any, keys: list[tuple[str, str, str]]) -> list[list[Hook]]:
    """asyncpg: the batch's distinct keys as arrays, in one round trip."""
    distinct = list(dict.fromkeys(keys))
    rows = await driver.fetch(
        _PG_MATCHING,
        [k[0] for k in distinct],
        [k[1] for k in distinct],
        [k[2] for k in distinct],
    )
    found: dict[tuple[str, str, str], list[Hook]] = {k: [] for k in distinct}
    for row in rows:
        found[distinct[row[0] - 1]].append(_raw_hook(row[1:]))
    return [list(found[k]) for k in keys]
