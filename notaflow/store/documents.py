"""Documents (one row per tenant + kind + ref) and their status history.

Status changes go through conditional UPDATEs (`WHERE status IN allowed_from AND attempt = n`),
so a duplicate or late event is a no-op rather than a wrong transition: this, not locking, is
what makes redelivery harmless.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sqlite_writer = (
            _SqliteClaimWriter(engine.url.database or "")
            if engine.dialect.name == "sqlite"
            else None
        )

    def close(self) -> None:
        if self._sqlite_writer is not None:
            self._sqlite_writer.close()

    # -- reads -------------------------------------------------------------------------------

    async def get(self, tenant_id: str, kind: str, ref: str) -> Document | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(documents).where(
                        documents.c.tenant_id == tenant_id,
                        documents.c.kind == kind,
                        documents.c.ref == ref,
                    )
                )
            ).first()
        return _doc(row) if row is not None else None

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
            inserted = await self._sqlite_writer.claim(requests, now)
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
        async with self._engine.begin() as conn:
            res = await conn.execute(
                documents.update()
                .where(
                    documents.c.id == document_id,
                    documents.c.attempt == attempt,
                    documents.c.submitted_at.is_(None),
                )
                .values(provider_ref=provider_ref, submitted_at=_now(), updated_at=_now())
            )
        return res.rowcount == 1

    async def unmark_submitted(self, document_id: int, attempt: int) -> None:
        """The request surely never reached the provider: it may be sent again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                documents.update()
                .where(documents.c.id == document_id, documents.c.attempt == attempt)
                .values(submitted_at=None, updated_at=_now())
            )

    async def set_provider_ref(self, document_id: int, attempt: int, provider_ref: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                documents.update()
                .where(documents.c.id == document_id, documents.c.attempt == attempt)
                .values(provider_ref=provider_ref)
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


class _SqliteClaimWriter:
    """The SQLite side of the group commit: a connection of its own, used from one thread, so
    a whole batch (insert, history, commit) costs one hop off the event loop instead of one
    per statement. SQLite has a single writer anyway; busy_timeout covers the other
    processes (consumers) writing to the same file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claims")
        self._conn: sqlite3.Connection | None = None

    async def claim(self, requests: list[ClaimRequest], now: datetime) -> dict[str, int]:
        # Inline first: a batch is a few milliseconds of SQLite work at most, and handing it
        # to a thread costs more in GIL hand-offs than it saves. Only when another process
        # holds the write lock (a short busy timeout expires) does the batch wait in the
        # thread, so the event loop never blocks on a lock.
        try:
            return self._claim(requests, now, busy_ms=20)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._claim, requests, now, 30_000)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    def _claim(self, requests: list[ClaimRequest], now: datetime, busy_ms: int) -> dict[str, int]:
        # Callers never overlap (the intake runs one claim batch at a time), so the loop and
        # the fallback thread can share one connection.
        conn = self._connection()
        conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        at = _sqlite_time(now)
        params: list[Any] = []
        for r in requests:
            params += [
                r.tenant_id, r.kind, r.ref, PROCESSING, 1, r.command_id, r.cnpj_prestador,
                orjson.dumps(r.payload).decode(), at, at,
            ]  # fmt: skip
        values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(requests))
        conn.execute("BEGIN IMMEDIATE")
        try:
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
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return inserted

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)
