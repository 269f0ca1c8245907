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
from notaflow.lifecycle import ERROR, PROCESSING, ref_reusable, sources
from notaflow.store.clock import as_utc as _utc
from notaflow.store.clock import now as _now
from notaflow.store.tables import blobs, document_events, documents


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
    """The reads and writes of a busy consumer (`get`, `set_provider_ref`, `mark_submitted`,
    `transition`, the re-claim after an error) go through group batches: what concurrent
    handlers ask for in the same moment costs one round trip (PostgreSQL) or one inline
    transaction (SQLite), not one pooled connection, one thread hop and one commit each.
    Callers still get their own answer, after the commit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        sqlite_path = (engine.url.database or "") if engine.dialect.name == "sqlite" else None
        self._sqlite_writer = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        # Writers of their own: each is used by one batch at a time (see _SqliteWriter).
        self._sqlite_updates = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._sqlite_reader = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._sqlite_transitions = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._sqlite_reclaims = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._sqlite_pref_reader = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._sqlite_blobs = _SqliteWriter(sqlite_path) if sqlite_path is not None else None
        self._reads: _Batcher[tuple[str, str, str], Document | None] = _Batcher(
            self._get_many, self._get_now if sqlite_path is not None else None
        )
        # Writes stay in group batches even on SQLite: a commit each, at once, took a write's
        # latency from ~10 ms to ~0.1 ms but cost ~0.2 ms of CPU per note in the consumer
        # benchmark (a WAL frame per page per commit, and checkpoints that often).
        self._updates: _Batcher[_Update, bool] = _Batcher(self._update_many)
        self._transitions: _Batcher[_Transition, Document | None] = _Batcher(self._transition_many)
        # Re-claims are rare; the batcher is what keeps their writer to one batch at a time.
        self._reclaims: _Batcher[_Reclaim, bool] = _Batcher(self._reclaim_many)
        # A provider callback's two store calls, batched like the emission's (one per note).
        self._by_pref: _Batcher[str, Document | None] = _Batcher(
            self._by_provider_refs, self._by_pref_now if sqlite_path is not None else None
        )
        self._blobs: _Batcher[_Blob, None] = _Batcher(self._put_blobs)

    def close(self) -> None:
        for writer in (
            self._sqlite_writer,
            self._sqlite_updates,
            self._sqlite_reader,
            self._sqlite_transitions,
            self._sqlite_reclaims,
            self._sqlite_pref_reader,
            self._sqlite_blobs,
        ):
            if writer is not None:
                writer.close()

    async def _on_driver(
        self,
        writer: _SqliteWriter | None,
        sqlite_work: Callable[..., _R],
        pg_work: Callable[..., Awaitable[_R]],
        *args: Any,
        read: bool = False,
    ) -> _R:
        """A batch on the driver, below SQLAlchemy: SQLite on the batch's own connection (a
        transaction unless it only reads), PostgreSQL on a pooled asyncpg connection."""
        if writer is not None:
            return await writer.run(sqlite_work, *args, transaction=not read)
        async with self._engine.connect() as conn:
            raw = await conn.get_raw_connection()
            return await pg_work(raw.driver_connection, *args)

    # -- reads -------------------------------------------------------------------------------

    async def get(self, tenant_id: str, kind: str, ref: str) -> Document | None:
        return await self._reads.submit((tenant_id, kind, ref))

    async def _get_many(self, keys: list[tuple[str, str, str]]) -> list[Document | None]:
        return await self._on_driver(self._sqlite_reader, _sqlite_get, _pg_get, keys, read=True)

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
        return await self._by_pref.submit(provider_ref)

    async def _by_provider_refs(self, refs: list[str]) -> list[Document | None]:
        return await self._on_driver(
            self._sqlite_pref_reader, _sqlite_by_pref, _pg_by_pref, refs, read=True
        )

    def _by_pref_now(self, refs: list[str]) -> list[Document | None] | None:
        assert self._sqlite_pref_reader is not None
        return self._sqlite_pref_reader.now(_sqlite_by_pref, refs, transaction=False)

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
        *,
        current: Document | None = None,
    ) -> Claim:
        """Take `ref` for a new emission, or raise RefInUse with the holder's status.

        `current` is the caller's fresh read of the ref's document, when it has one (a
        re-emission after erro_autorizacao): the INSERT that would only collide is skipped,
        and with it SQLAlchemy's costly IntegrityError path. The re-claim's conditions (status
        and attempt as read) still guard against a row that changed since."""
        if current is not None:
            if (current.tenant_id, current.kind, current.ref) != (tenant_id, kind, ref):
                raise ValueError(f"current is not the document of {tenant_id}/{kind}/{ref}")
            return await self._reclaim(
                tenant_id, kind, ref, cnpj_prestador, payload, command_id, source, current
            )
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
        inserted = await self._on_driver(
            self._sqlite_writer, _sqlite_claim, _pg_claim, requests, now
        )
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
        current: Document | None = None,
    ) -> Claim:
        if current is None:
            current = await self.get(tenant_id, kind, ref)
        if current is None:  # deleted by a concurrent release: the caller may simply retry
            raise RefInUse(ref, PROCESSING)
        if not ref_reusable(current.status):
            raise RefInUse(ref, current.status)
        # Serialized here, not in the batch: a payload orjson refuses fails its caller only.
        item = _Reclaim(
            current.id,
            current.attempt,
            command_id,
            cnpj_prestador,
            orjson.dumps(payload).decode(),
            source,
        )
        if not await self._reclaims.submit(item):
            raise RefInUse(ref, PROCESSING)
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
        return Claim(current.id, command_id, current.attempt + 1, previous)

    async def _reclaim_many(self, items: list[_Reclaim]) -> list[bool]:
        return await self._on_driver(
            self._sqlite_reclaims, _sqlite_reclaim, _pg_reclaim, items, _now()
        )

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
        return await self._on_driver(
            self._sqlite_updates, _sqlite_update, _pg_update, updates, _now()
        )

    async def transition(
        self,
        document_id: int,
        attempt: int,
        status: str,
        source: str,
        result: dict[str, Any] | None = None,
        erros: list[dict[str, Any]] | None = None,
        detail: dict[str, Any] | None = None,
        after: frozenset[str] | None = None,
    ) -> Document | None:
        """Move a document to `status` if that is a legal next step for this attempt; return
        the updated document, or None when the change was already applied or is not allowed.
        `after` widens the statuses it may come from, for a correction the provider confirmed
        (an authorization applied from an unconfirmed callback, issue 19)."""
        allowed = sources(status)
        if not allowed:
            raise ValueError(f"no transition into {status!r}")
        if after:
            allowed = allowed | after
        # JSON is serialized here, not in the batch: a value orjson refuses fails its caller
        # only. None stays None (SQL NULL, as the Json column type writes it).
        item = _Transition(
            document_id,
            attempt,
            status,
            allowed,
            source,
            _json_text(result),
            _json_text(erros),
            _json_text(detail or erros),
        )
        return await self._transitions.submit(item)

    async def _transition_many(self, items: list[_Transition]) -> list[Document | None]:
        return await self._on_driver(
            self._sqlite_transitions, _sqlite_transition, _pg_transition, items, _now()
        )

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
        """Store a blob under `path` unless one is there (the first copy wins: a redelivered
        callback downloads the same XML again)."""
        await self._blobs.submit(_Blob(path, tenant_id, content_type, data))

    async def _put_blobs(self, items: list[_Blob]) -> list[None]:
        return await self._on_driver(
            self._sqlite_blobs, _sqlite_put_blobs, _pg_put_blobs, items, _now()
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


def _sqlite_by_pref(conn: sqlite3.Connection, refs: list[str]) -> list[Document | None]:
    sql = f"SELECT {_SELECT_COLUMNS} FROM documents WHERE provider_ref = ?"
    out: list[Document | None] = []
    for ref in refs:
        row = conn.execute(sql, (ref,)).fetchone()
        out.append(_raw_doc(row) if row is not None else None)
    return out


async def _pg_by_pref(driver: Any, refs: list[str]) -> list[Document | None]:
    rows = await driver.fetch(
        f"SELECT {', '.join('d.' + c.strip() for c in _SELECT_COLUMNS.split(','))} "
        "FROM documents d JOIN unnest($1::text[]) AS u(p) ON d.provider_ref = u.p",
        refs,
    )
    found = {row[7]: _raw_doc(row) for row in rows}  # provider_ref is the 8th column
    return [found.get(ref) for ref in refs]


@dataclass(frozen=True)
class _Blob:
    path: str
    tenant_id: str
    content_type: str
    data: bytes


def _sqlite_put_blobs(conn: sqlite3.Connection, items: list[_Blob], now: datetime) -> list[None]:
    at = _sqlite_time(now)
    conn.executemany(
        "INSERT OR IGNORE INTO blobs (path, tenant_id, content_type, data, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(b.path, b.tenant_id, b.content_type, b.data, at) for b in items],
    )
    return [None] * len(items)


async def _pg_put_blobs(driver: Any, items: list[_Blob], now: datetime) -> list[None]:
    await driver.execute(
        "INSERT INTO blobs (path, tenant_id, content_type, data, created_at) "
        "SELECT p, t, c, d, $5 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[]) "
        "AS u(p, t, c, d) ON CONFLICT (path) DO NOTHING",
        [b.path for b in items],
        [b.tenant_id for b in items],
        [b.content_type for b in items],
        [b.data for b in items],
        now,
    )
    return [None] * len(items)


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


# The same, qualified, for statements that join `documents d` with the batch's arrays.
_PG_COLUMNS = ", ".join("d." + c.strip() for c in _SELECT_COLUMNS.split(","))


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
        f"SELECT {_PG_COLUMNS} "
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


def _json_text(value: Any) -> str | None:
    # What the Json column type binds: orjson's text, and None as SQL NULL (not JSON null).
    return None if value is None else orjson.dumps(value).decode()


@dataclass(frozen=True)
class _Transition:
    """One `transition` call, its JSON already serialized (None: leave the column as it is;
    for `detail`: no detail)."""

    document_id: int
    attempt: int
    status: str
    allowed: frozenset[str]  # lifecycle.sources(status), widened by `after`
    source: str
    result: str | None
    erros: str | None
    detail: str | None


def _sqlite_transition(
    conn: sqlite3.Connection, items: list[_Transition], now: datetime
) -> list[Document | None]:
    # In arrival order, each with its own condition: what the one-by-one statements did, in one
    # transaction. COALESCE keeps the stored result / erros when the transition brings none;
    # RETURNING is the read-back of the updated row.
    at = _sqlite_time(now)
    out: list[Document | None] = []
    for t in items:
        allowed = sorted(t.allowed)
        rows = conn.execute(
            "UPDATE documents SET status = ?, updated_at = ?, result = COALESCE(?, result), "
            "erros = COALESCE(?, erros) "
            f"WHERE id = ? AND attempt = ? AND status IN ({','.join('?' * len(allowed))}) "
            f"RETURNING {_SELECT_COLUMNS}",
            (t.status, at, t.result, t.erros, t.document_id, t.attempt, *allowed),
        ).fetchall()
        if len(rows) != 1:
            out.append(None)
            continue
        conn.execute(
            "INSERT INTO document_events (document_id, attempt, status, source, detail, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (t.document_id, t.attempt, t.status, t.source, t.detail, at),
        )
        out.append(_raw_doc(rows[0]))
    return out


def _waves(document_ids: Sequence[int]) -> list[list[int]]:
    """The positions of a batch in rounds where no document appears twice, each document's
    items in arrival order across the rounds: within a round, a set-based statement means the
    same as the one-by-one statements (different documents do not interact).

    Each round in document order: a batch locks several rows in one transaction, where one
    call used to lock one, and two processes' batches locking them in opposite orders would
    deadlock. With the plan a large table gets (the arrays driving an index scan) rows lock in
    the arrays' order; later rounds only revisit rows the first one locked."""
    waves: list[list[int]] = []
    seen: dict[int, int] = {}
    for i, document_id in enumerate(document_ids):
        k = seen.get(document_id, 0)
        seen[document_id] = k + 1
        if k == len(waves):
            waves.append([])
        waves[k].append(i)
    for wave in waves:
        wave.sort(key=document_ids.__getitem__)
    return waves


# One round trip per round of `_waves` (almost always one per batch): the conditional UPDATE,
# the history rows of what it changed, and the updated rows back. Each item's allowed statuses
# travel as one comma-joined string (array elements cannot be arrays of varying length); the
# statuses are plain words.
_PG_TRANSITION = (
    "WITH changed AS ("
    "UPDATE documents d SET status = u.s, updated_at = $1, "
    "result = COALESCE(u.r, d.result), erros = COALESCE(u.e, d.erros) "
    "FROM unnest($2::int[], $3::bigint[], $4::int[], $5::text[], $6::text[], $7::text[], "
    "$8::text[], $9::text[], $10::text[]) AS u(n, i, a, s, f, r, e, src, det) "
    "WHERE d.id = u.i AND d.attempt = u.a AND d.status = ANY(string_to_array(u.f, ',')) "
    f"RETURNING {_PG_COLUMNS}, u.n, u.src, u.det"
    "), recorded AS ("
    "INSERT INTO document_events (document_id, attempt, status, source, detail, at) "
    "SELECT id, attempt, status, src, det, $1 FROM changed ORDER BY n"
    ") "
    "SELECT * FROM changed"
)


async def _pg_transition(
    driver: Any, items: list[_Transition], now: datetime
) -> list[Document | None]:
    """asyncpg: each round of the batch as arrays in one statement, all in one transaction."""
    out: list[Document | None] = [None] * len(items)
    async with driver.transaction():
        for wave in _waves([t.document_id for t in items]):
            batch = [items[n] for n in wave]
            rows = await driver.fetch(
                _PG_TRANSITION,
                now,
                wave,
                [t.document_id for t in batch],
                [t.attempt for t in batch],
                [t.status for t in batch],
                [",".join(sorted(t.allowed)) for t in batch],
                [t.result for t in batch],
                [t.erros for t in batch],
                [t.source for t in batch],
                [t.detail for t in batch],
            )
            for row in rows:
                out[row["n"]] = _raw_doc(row)  # the columns of _SELECT_COLUMNS come first
    return out


@dataclass(frozen=True)
class _Reclaim:
    """The re-claim of a document found in erro_autorizacao at `attempt`; payload as JSON."""

    document_id: int
    attempt: int
    command_id: str
    cnpj_prestador: str
    payload: str
    source: str


def _sqlite_reclaim(conn: sqlite3.Connection, items: list[_Reclaim], now: datetime) -> list[bool]:
    # In arrival order: a second re-claim of the same attempt finds the first one's row.
    at = _sqlite_time(now)
    out: list[bool] = []
    for r in items:
        cur = conn.execute(
            "UPDATE documents SET status = ?, attempt = ?, command_id = ?, cnpj_prestador = ?, "
            "payload = ?, provider_ref = NULL, result = NULL, erros = NULL, "
            "submitted_at = NULL, updated_at = ? WHERE id = ? AND status = ? AND attempt = ?",
            (
                PROCESSING, r.attempt + 1, r.command_id, r.cnpj_prestador, r.payload, at,
                r.document_id, ERROR, r.attempt,
            ),
        )  # fmt: skip
        done = cur.rowcount == 1
        if done:
            conn.execute(
                "INSERT INTO document_events (document_id, attempt, status, source, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (r.document_id, r.attempt + 1, PROCESSING, r.source, at),
            )
        out.append(done)
    return out


# The UPDATE and its history row in one round trip; a row back means the re-claim happened.
_PG_RECLAIM = (
    "WITH changed AS ("
    "UPDATE documents SET status = $1, attempt = $2 + 1, command_id = $3, cnpj_prestador = $4, "
    "payload = $5, provider_ref = NULL, result = NULL, erros = NULL, submitted_at = NULL, "
    "updated_at = $6 WHERE id = $7 AND status = $8 AND attempt = $2 RETURNING id, attempt"
    ") "
    "INSERT INTO document_events (document_id, attempt, status, source, at) "
    "SELECT id, attempt, $1, $9, $6 FROM changed RETURNING document_id"
)


async def _pg_reclaim(driver: Any, items: list[_Reclaim], now: datetime) -> list[bool]:
    """asyncpg: one statement per item in one transaction (a rare path), in document order
    (rows lock in one order, as in `_waves`), each document's items in arrival order."""
    out = [False] * len(items)
    async with driver.transaction():
        for n in sorted(range(len(items)), key=lambda k: items[k].document_id):
            r = items[n]
            done = await driver.fetchval(
                _PG_RECLAIM,
                PROCESSING,
                r.attempt,
                r.command_id,
                r.cnpj_prestador,
                r.payload,
                now,
                r.document_id,
                ERROR,
                r.source,
            )
            out[n] = done is not None
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
