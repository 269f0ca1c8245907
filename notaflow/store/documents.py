"""Documents (one row per tenant + kind + ref) and their status history.

Status changes go through conditional UPDATEs (`WHERE status IN allowed_from AND attempt = n`),
so a duplicate or late event is a no-op rather than a wrong transition: this, not locking, is
what makes redelivery harmless.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notaflow.errors import RefInUse
from notaflow.store.clock import as_utc as _utc
from notaflow.store.clock import now as _now
from notaflow.store.tables import blobs, document_events, documents

PROCESSING = "processando_autorizacao"
AUTHORIZED = "autorizado"
ERROR = "erro_autorizacao"
CANCELLED = "cancelado"

# Which status may follow which. A ref is reusable only after erro_autorizacao (Focus rule).
TRANSITIONS: dict[str, frozenset[str]] = {
    AUTHORIZED: frozenset({PROCESSING}),
    ERROR: frozenset({PROCESSING}),
    CANCELLED: frozenset({AUTHORIZED}),
}


@dataclass(frozen=True)
class Document:
    id: int
    tenant_id: str
    kind: str
    ref: str
    status: str
    attempt: int
    command_id: str
    provider_ref: str | None
    cnpj_prestador: str
    payload: dict[str, Any]
    result: dict[str, Any]
    erros: list[dict[str, Any]] | None
    submitted_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Claim:
    """What `claim` changed, so `release` can undo it when the command could not be published."""

    document_id: int
    command_id: str
    attempt: int
    previous: dict[str, Any] | None  # the row before a reuse after erro_autorizacao


@dataclass(frozen=True)
class ClaimRequest:
    tenant_id: str
    kind: str
    ref: str
    cnpj_prestador: str
    payload: dict[str, Any]
    command_id: str
    source: str


def _doc(row: sa.Row[Any]) -> Document:
    m = row._mapping
    return Document(
        id=m["id"],
        tenant_id=m["tenant_id"],
        kind=m["kind"],
        ref=m["ref"],
        status=m["status"],
        attempt=m["attempt"],
        command_id=m["command_id"],
        provider_ref=m["provider_ref"],
        cnpj_prestador=m["cnpj_prestador"],
        payload=m["payload"] or {},
        result=m["result"] or {},
        erros=m["erros"],
        submitted_at=_utc(m["submitted_at"]),
        created_at=_utc(m["created_at"]) or _now(),
        updated_at=_utc(m["updated_at"]) or _now(),
    )


class DocumentStore:
    """The reads and writes of a busy consumer (`get`, `set_provider_ref`, `mark_submitted`)
    go through group batches: what concurrent handlers ask for in the same moment costs one
    round trip (PostgreSQL) or one inline transaction (SQLite), not one pooled connection, one
    thread hop and one commit each. Callers still get their own answer, after the commit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        sqlite_path = (engine.url.database or "") if engine.dialect.name == "sqlite" else None
        self._sqlite_writer = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        # Writers of their own: each is used by one batch at a time (see _SqliteWriter).
        self._sqlite_updates = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._sqlite_reader = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._reads: _Batcher[tuple[str, str, str], Document | None] = _Batcher(
            self._get_many, self._get_now if sqlite_path is not None else None
        )
        # Writes stay in group batches even on SQLite: a commit each, at once, took a write's
        # latency from ~10 ms to ~0.1 ms but cost ~0.2 ms of CPU per note in the consumer
        # benchmark (a WAL frame per page per commit, and checkpoints that often).
        self._updates: _Batcher[_Update, bool] = _Batcher(self._update_many)

    def close(self) -> None:
        for writer in (self._sqlite_writer, self._sqlite_updates, self._sqlite_reader):
            if writer is not None:
                writer.close()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, tenant_id: str, kind: str, ref: str) -> Document | None:
        return await self._reads.submit((tenant_id, kind, ref))

    async def _get_many(self, keys: list[tuple[str, str, str]]) -> list[Document | None]:
        if self._sqlite_reader is not None:
            return await self._sqlite_reader.run(_sqlite_get, keys, transaction=False)
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            return await _pg_get(raw.driver_connection, keys)

    def _get_now(self, keys: list[tuple[str, str, str]]) -> list[Document | None] | None:
        assert self._sqlite_reader is not None
        return self._sqlite_reader.now(_sqlite_get, keys, transaction=False)

    async def by_id(self, document_id: int) -> Document | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(documents).where(documents.c.id == document_id))
            ).first()
        return _doc(row) if row is not None else None

    async def by_provider_ref(self, provider_ref: str) -> Document | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(documents).where(documents.c.provider_ref == provider_ref)
                )
            ).first()
        return _doc(row) if row is not None else None

    async def history(self, document_id: int) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(document_events)
                    .where(document_events.c.document_id == document_id)
                    .order_by(document_events.c.id)
                )
            ).all()
        return [dict(r._mapping) for r in rows]

    async def stuck(self, status: str, older_than: datetime, limit: int = 100) -> list[Document]:
        async with self._engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(documents)
                    .where(documents.c.status == status, documents.c.updated_at < older_than)
                    .order_by(documents.c.updated_at)
                    .limit(limit)
                )
            ).all()
        return [_doc(r) for r in rows]

    # -- claims ------------------------------------------------------------------------------

    async def claim(
        self,
        tenant_id: str,
        kind: str,
        ref: str,
        cnpj_prestador: str,
        payload: dict[str, Any],
        command_id: str,
        source: str,
    ) -> Claim:
        """Take `ref` for a new emission, or raise RefInUse with the holder's status."""
        now = _now()
        try:
            async with self._engine.begin() as conn:
                res = await conn.execute(
                    documents.insert().values(
                        tenant_id=tenant_id,
                        kind=kind,
                        ref=ref,
                        status=PROCESSING,
                        attempt=1,
                        command_id=command_id,
                        cnpj_prestador=cnpj_prestador,
                        payload=payload,
                        created_at=now,
                        updated_at=now,
                    )
                )
                doc_id = int(res.inserted_primary_key[0])  # type: ignore[index]
                await self._record(conn, doc_id, 1, PROCESSING, source, None, now)
            return Claim(doc_id, command_id, 1, None)
        except IntegrityError:
            pass
        return await self._reclaim(
            tenant_id, kind, ref, cnpj_prestador, payload, command_id, source
        )

    async def claim_many(self, requests: list[ClaimRequest]) -> list[Claim | RefInUse]:
        """Claim many refs in one transaction (group commit): one multi-row INSERT .. ON
        CONFLICT DO NOTHING for all of them; the few that collide take the one-by-one path.

        This is the ingress's hot path, so it speaks to the driver directly (one statement,
        parameters built in one pass) instead of through SQLAlchemy's per-row processing; the
        rows it writes are the ones the Core table definitions read back."""
        if not requests:
            return []
        now = _now()
        if self._sqlite_writer is not None:
            inserted = await self._sqlite_writer.run(_sqlite_claim, requests, now)
        else:
            async with self._engine.connect() as conn:
                raw = await conn.get_raw_connection()
                inserted = await _pg_claim(raw.driver_connection, requests, now)
        out: list[Claim | RefInUse] = []
        for r in requests:
            if r.command_id in inserted:
                out.append(Claim(inserted[r.command_id], r.command_id, 1, None))
                continue
            try:
                out.append(
                    await self._reclaim(
                        r.tenant_id,
                        r.kind,
                        r.ref,
                        r.cnpj_prestador,
                        r.payload,
                        r.command_id,
                        r.source,
                    )
                )
            except RefInUse as exc:
                out.append(exc)
        return out

    async def _reclaim(
        self,
        tenant_id: str,
        kind: str,
        ref: str,
        cnpj_prestador: str,
        payload: dict[str, Any],
        command_id: str,
        source: str,
    ) -> Claim:
        current = await self.get(tenant_id, kind, ref)
        if current is None:  # deleted by a concurrent release: the caller may simply retry
            raise RefInUse(ref, PROCESSING)
        if current.status != ERROR:
            raise RefInUse(ref, current.status)
        now = _now()
        attempt = current.attempt + 1
        async with self._engine.begin() as conn:
            res = await conn.execute(
                documents.update()
                .where(
                    documents.c.id == current.id,
                    documents.c.status == ERROR,
                    documents.c.attempt == current.attempt,
                )
                .values(
                    status=PROCESSING,
                    attempt=attempt,
                    command_id=command_id,
                    cnpj_prestador=cnpj_prestador,
                    payload=payload,
                    provider_ref=None,
                    result=None,
                    erros=None,
                    submitted_at=None,
                    updated_at=now,
                )
            )
            if res.rowcount != 1:
                raise RefInUse(ref, PROCESSING)
            await self._record(conn, current.id, attempt, PROCESSING, source, None, now)
        previous = {
            "status": current.status,
            "attempt": current.attempt,
            "command_id": current.command_id,
            "cnpj_prestador": current.cnpj_prestador,
            "payload": current.payload,
            "provider_ref": current.provider_ref,
            "result": current.result,
            "erros": current.erros,
            "submitted_at": current.submitted_at,
        }
        return Claim(current.id, command_id, attempt, previous)

    async def release(self, claim: Claim) -> None:
        """Undo a claim whose command never reached Kafka (the client got a 503)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                document_events.delete().where(
                    document_events.c.document_id == claim.document_id,
                    document_events.c.attempt == claim.attempt,
                )
            )
            match = (documents.c.id == claim.document_id) & (
                documents.c.command_id == claim.command_id
            )
            if claim.previous is None:
                await conn.execute(documents.delete().where(match))
            else:
                await conn.execute(
                    documents.update().where(match).values(**claim.previous, updated_at=_now())
                )

    # -- processing --------------------------------------------------------------------------

    async def mark_submitted(self, document_id: int, attempt: int, provider_ref: str) -> bool:
        """Record that the provider has the request; False when it was already recorded."""
        return await self._updates.submit(_Update(True, document_id, attempt, provider_ref))

    async def unmark_submitted(self, document_id: int, attempt: int) -> None:
        """The request surely never reached the provider: it may be sent again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                documents.update()
                .where(documents.c.id == document_id, documents.c.attempt == attempt)
                .values(submitted_at=None, updated_at=_now())
            )

    async def set_provider_ref(self, document_id: int, attempt: int, provider_ref: str) -> None:
        """Committed when this returns: the provider may call back before we hear its answer."""
        await self._updates.submit(_Update(False, document_id, attempt, provider_ref))

    async def _update_many(self, updates: list[_Update]) -> list[bool]:
        if self._sqlite_updates is not None:
            return await self._sqlite_updates.run(_sqlite_update, updates, _now())
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            return await _pg_update(raw.driver_connection, updates, _now())

    async def transition(
        self,
        document_id: int,
        attempt: int,
        status: str,
        source: str,
        result: dict[str, Any] | None = None,
        erros: list[dict[str, Any]] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Document | None:
        """Move a document to `status` if that is a legal next step for this attempt; return
        the updated document, or None when the change was already applied or is not allowed."""
        allowed = TRANSITIONS.get(status)
        if not allowed:
            raise ValueError(f"no transition into {status!r}")
        now = _now()
        values: dict[str, Any] = {"status": status, "updated_at": now}
        if result is not None:
            values["result"] = result
        if erros is not None:
            values["erros"] = erros
        async with self._engine.begin() as conn:
            res = await conn.execute(
                documents.update()
                .where(
                    documents.c.id == document_id,
                    documents.c.attempt == attempt,
                    documents.c.status.in_(allowed),
                )
                .values(**values)
            )
            if res.rowcount != 1:
                return None
            await self._record(conn, document_id, attempt, status, source, detail or erros, now)
            row = (
                await conn.execute(sa.select(documents).where(documents.c.id == document_id))
            ).first()
        return _doc(row) if row is not None else None

    async def note(
        self, document_id: int, attempt: int, status: str, source: str, detail: Any
    ) -> None:
        """A history entry that is not a status change (e.g. a refused cancellation)."""
        async with self._engine.begin() as conn:
            await self._record(conn, document_id, attempt, status, source, detail, _now())

    @staticmethod
    async def _record(
        conn: AsyncConnection,
        document_id: int,
        attempt: int,
        status: str,
        source: str,
        detail: Any,
        at: datetime,
    ) -> None:
        await conn.execute(
            document_events.insert().values(
                document_id=document_id,
                attempt=attempt,
                status=status,
                source=source,
                detail=detail,
                at=at,
            )
        )

    # -- blobs (XML, PDF: kept out of Kafka) -------------------------------------------------

    async def put_blob(self, path: str, tenant_id: str, content_type: str, data: bytes) -> None:
        async with self._engine.begin() as conn:
            exists = await conn.scalar(sa.select(blobs.c.path).where(blobs.c.path == path))
            if exists is None:
                await conn.execute(
                    blobs.insert().values(
                        path=path,
                        tenant_id=tenant_id,
                        content_type=content_type,
                        data=data,
                        created_at=_now(),
                    )
                )

    async def get_blob(self, path: str) -> tuple[str, bytes] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(blobs.c.content_type, blobs.c.data).where(blobs.c.path == path)
                )
            ).first()
        return (row.content_type, row.data) if row is not None else None


_DOC_COLUMNS = (
    "tenant_id, kind, ref, status, attempt, command_id, cnpj_prestador, payload, "
    "created_at, updated_at"
)


async def _pg_claim(driver: Any, requests: list[ClaimRequest], now: datetime) -> dict[str, int]:
    """asyncpg: the whole batch as arrays, unnested server-side, in one round trip."""
    async with driver.transaction():
        rows = await driver.fetch(
            f"INSERT INTO documents ({_DOC_COLUMNS}) "
            "SELECT t, k, r, $7, 1, c, n, p, $8, $8 "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])"
            " AS u(t, k, r, c, n, p) "
            "ON CONFLICT (tenant_id, kind, ref) DO NOTHING RETURNING id, command_id",
            [r.tenant_id for r in requests],
            [r.kind for r in requests],
            [r.ref for r in requests],
            [r.command_id for r in requests],
            [r.cnpj_prestador for r in requests],
            [orjson.dumps(r.payload).decode() for r in requests],
            PROCESSING,
            now,
        )
        inserted = {row["command_id"]: int(row["id"]) for row in rows}
        if inserted:
            sources = {r.command_id: r.source for r in requests}
            await driver.execute(
                "INSERT INTO document_events (document_id, attempt, status, source, at) "
                "SELECT d, 1, $3, s, $4 FROM unnest($1::bigint[], $2::text[]) AS u(d, s)",
                list(inserted.values()),
                [sources[c] for c in inserted],
                PROCESSING,
                now,
            )
    return inserted


def _sqlite_time(value: datetime) -> str:
    # The storage format of SQLAlchemy's SQLite DateTime, so Core reads these rows back.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _sqlite_claim(
    conn: sqlite3.Connection, requests: list[ClaimRequest], now: datetime
) -> dict[str, int]:
    at = _sqlite_time(now)
    params: list[Any] = []
    for r in requests:
        params += [
            r.tenant_id, r.kind, r.ref, PROCESSING, 1, r.command_id, r.cnpj_prestador,
            orjson.dumps(r.payload).decode(), at, at,
        ]  # fmt: skip
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(requests))
    rows = conn.execute(
        f"INSERT INTO documents ({_DOC_COLUMNS}) VALUES {values} "
        "ON CONFLICT (tenant_id, kind, ref) DO NOTHING RETURNING id, command_id",
        params,
    ).fetchall()
    inserted = {command_id: int(doc_id) for doc_id, command_id in rows}
    if inserted:
        sources = {r.command_id: r.source for r in requests}
        conn.executemany(
            "INSERT INTO document_events (document_id, attempt, status, source, at) "
            "VALUES (?, 1, ?, ?, ?)",
            [(doc_id, PROCESSING, sources[c], at) for c, doc_id in inserted.items()],
        )
    return inserted


@dataclass(frozen=True)
class _Update:
    """`set_provider_ref` (submitted False) or `mark_submitted` (True) of one attempt."""

    submitted: bool
    document_id: int
    attempt: int
    provider_ref: str


_SELECT_COLUMNS = (
    "id, tenant_id, kind, ref, status, attempt, command_id, provider_ref, cnpj_prestador, "
    "payload, result, erros, submitted_at, created_at, updated_at"
)


def _raw_doc(row: Sequence[Any]) -> Document:
    """A Document from a driver row in `_SELECT_COLUMNS` order: JSON as text, timestamps as
    SQLite's text (SQLAlchemy's storage format) or asyncpg's datetimes."""

    def when(value: Any) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return _utc(value)
        return _utc(datetime.fromisoformat(value))

    def json(value: Any) -> Any:
        return None if value is None else orjson.loads(value)

    return Document(
        id=row[0],
        tenant_id=row[1],
        kind=row[2],
        ref=row[3],
        status=row[4],
        attempt=row[5],
        command_id=row[6],
        provider_ref=row[7],
        cnpj_prestador=row[8],
        payload=json(row[9]) or {},
        result=json(row[10]) or {},
        erros=json(row[11]),
        submitted_at=when(row[12]),
        created_at=when(row[13]) or _now(),
        updated_at=when(row[14]) or _now(),
    )


def _sqlite_get(
    conn: sqlite3.Connection, keys: list[tuple[str, str, str]]
) -> list[Document | None]:
    # One indexed lookup per key on one connection: microseconds each, no thread hop.
    sql = f"SELECT {_SELECT_COLUMNS} FROM documents WHERE tenant_id = ? AND kind = ? AND ref = ?"
    out: list[Document | None] = []
    for key in keys:
        row = conn.execute(sql, key).fetchone()
        out.append(_raw_doc(row) if row is not None else None)
    return out


async def _pg_get(driver: Any, keys: list[tuple[str, str, str]]) -> list[Document | None]:
    rows = await driver.fetch(
        f"SELECT {', '.join('d.' + c.strip() for c in _SELECT_COLUMNS.split(','))} "
        "FROM documents d JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(t, k, r) "
        "ON d.tenant_id = u.t AND d.kind = u.k AND d.ref = u.r",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    )
    found = {(row[1], row[2], row[3]): _raw_doc(row) for row in rows}
    return [found.get(key) for key in keys]


def _sqlite_update(conn: sqlite3.Connection, updates: list[_Update], now: datetime) -> list[bool]:
    # In arrival order, each with its own condition and row count: exactly what the one-by-one
    # statements did, inside one transaction.
    at = _sqlite_time(now)
    out: list[bool] = []
    for u in updates:
        if u.submitted:
            cur = conn.execute(
                "UPDATE documents SET provider_ref = ?, submitted_at = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND submitted_at IS NULL",
                (u.provider_ref, at, at, u.document_id, u.attempt),
            )
        else:
            cur = conn.execute(
                "UPDATE documents SET provider_ref = ? WHERE id = ? AND attempt = ?",
                (u.provider_ref, u.document_id, u.attempt),
            )
        out.append(cur.rowcount == 1)
    return out


async def _pg_update(driver: Any, updates: list[_Update], now: datetime) -> list[bool]:
    """asyncpg: one statement per kind of update, the rows as arrays. A batch never holds two
    updates of one attempt (a handler awaits each before the next, and one document's records
    run one at a time), so the set-based statements mean the same as the one-by-one ones."""
    refs = [u for u in updates if not u.submitted]
    marks = [u for u in updates if u.submitted]
    done: set[tuple[int, int]] = set()
    async with driver.transaction():
        if refs:
            await driver.execute(
                "UPDATE documents d SET provider_ref = u.p "
                "FROM unnest($1::bigint[], $2::int[], $3::text[]) AS u(i, a, p) "
                "WHERE d.id = u.i AND d.attempt = u.a",
                [u.document_id for u in refs],
                [u.attempt for u in refs],
                [u.provider_ref for u in refs],
            )
        if marks:
            rows = await driver.fetch(
                "UPDATE documents d SET provider_ref = u.p, submitted_at = $4, updated_at = $4 "
                "FROM unnest($1::bigint[], $2::int[], $3::text[]) AS u(i, a, p) "
                "WHERE d.id = u.i AND d.attempt = u.a AND d.submitted_at IS NULL "
                "RETURNING d.id, d.attempt",
                [u.document_id for u in marks],
                [u.attempt for u in marks],
                [u.provider_ref for u in marks],
                now,
            )
            done = {(int(r[0]), int(r[1])) for r in rows}
    out: list[bool] = []
    for u in updates:
        key = (u.document_id, u.attempt)
        out.append(not u.submitted or key in done)
        if u.submitted:
            done.discard(key)  # a second mark of the same attempt would have found it set
    return out


_T = TypeVar("_T")
_R = TypeVar("_R")


class _Batcher(Generic[_T, _R]):
    """Group batches for concurrent callers (the ingress's Intake does the same for claims).
    Batches form by themselves: the next starts when the previous ends, so an idle process
    adds no latency and a busy one pays one round trip per batch. One batch at a time, which
    is what lets a batch run on a single connection.

    `now`, when given, does a batch synchronously or returns None when it cannot without
    waiting (SQLite: the write lock is taken). A caller that finds no batch running or
    waiting tries it first: its answer then comes with no turn of the event loop, where the
    batch's task and the caller's wake-up cost two (on a busy loop, most of a read's
    latency)."""

    def __init__(
        self,
        run: Callable[[list[_T]], Awaitable[Sequence[_R]]],
        now: Callable[[list[_T]], Sequence[_R] | None] | None = None,
        max_batch: int = 500,
    ) -> None:
        self._run = run
        self._now = now
        self._max = max_batch
        self._waiting: list[tuple[_T, asyncio.Future[_R]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: _T) -> _R:
        if (
            self._now is not None
            and not self._waiting
            and (self._worker is None or self._worker.done())
        ):
            done = self._now([item])
            if done is not None:
                return done[0]
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:  # each caller sees the failure, as it would have alone
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class _SqliteWriter:
    """One SQLite connection of its own, for the group batches: a whole batch (statements and
    commit) costs one step on the event loop instead of a thread hop per statement. Inline
    first: a batch is a few milliseconds of SQLite work at most, and handing it to a thread
    costs more in GIL hand-offs than it saves. Only when another process holds the write lock
    (no busy wait inline: even 20 ms held the whole event loop, every in-flight handler with it,
    several times a second under load) does the batch wait in the thread, so the event loop
    never blocks on a lock. SQLite has a single writer anyway; busy_timeout covers the other
    processes writing to the same file. Its one user runs one batch at a time, so the loop and
    the fallback thread never share the connection at once."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-batch")
        self._conn: sqlite3.Connection | None = None

    async def run(self, work: Callable[..., _R], *args: Any, transaction: bool = True) -> _R:
        try:
            return self._transaction(work, args, transaction, 0)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._transaction, work, args, transaction, 30_000
        )

    def now(self, work: Callable[..., _R], *args: Any, transaction: bool = True) -> _R | None:
        """`run` on the loop only: None when the write lock is taken (the caller then waits
        for it some other way). Not while a `run` of the same user is under way."""
        try:
            return self._transaction(work, args, transaction, 0)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        return None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    def _transaction(
        self, work: Callable[..., _R], args: tuple[Any, ...], transaction: bool, busy_ms: int
    ) -> _R:
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        if not transaction:  # reads: each statement sees the latest commit
            return work(conn, *args)
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = work(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)
