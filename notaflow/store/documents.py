"""Documents (one row per tenant + kind + ref) and their status history.

Status changes go through conditional UPDATEs (`WHERE status IN allowed_from AND attempt = n`),
so a duplicate or late event is a no-op rather than a wrong transition: this, not locking, is
what makes redelivery harmless.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notaflow.errors import RefInUse
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

    @property
    def numeric_id(self) -> int:
        return self.id


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


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands timestamps back naive; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


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
        """Claim many refs in one transaction (group commit): one INSERT .. ON CONFLICT DO
        NOTHING for all of them; the few that collide take the one-by-one path."""
        now = _now()
        rows = [
            {
                "tenant_id": r.tenant_id,
                "kind": r.kind,
                "ref": r.ref,
                "status": PROCESSING,
                "attempt": 1,
                "command_id": r.command_id,
                "cnpj_prestador": r.cnpj_prestador,
                "payload": r.payload,
                "created_at": now,
                "updated_at": now,
            }
            for r in requests
        ]
        async with self._engine.begin() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = (
                dialect.insert(documents)
                .on_conflict_do_nothing(index_elements=["tenant_id", "kind", "ref"])
                .returning(documents.c.id, documents.c.command_id)
            )
            inserted = {row.command_id: int(row.id) for row in await conn.execute(stmt, rows)}
            if inserted:
                await conn.execute(
                    document_events.insert(),
                    [
                        {
                            "document_id": inserted[r.command_id],
                            "attempt": 1,
                            "status": PROCESSING,
                            "source": r.source,
                            "detail": None,
                            "at": now,
                        }
                        for r in requests
                        if r.command_id in inserted
                    ],
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
            await self._record(conn, document_id, attempt, status, source, erros, now)
            row = (
                await conn.execute(sa.select(documents).where(documents.c.id == document_id))
            ).first()
        return _doc(row) if row is not None else None

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


class ClaimQueue:
    """Group commit for the ingress hot path: concurrent requests' claims share one
    transaction. A batch starts as soon as the previous one ends, so an idle ingress adds no
    latency and a busy one pays one commit per batch instead of one per request."""

    def __init__(self, store: DocumentStore, max_batch: int = 256) -> None:
        self._store = store
        self._max = max_batch
        self._waiting: list[tuple[ClaimRequest, asyncio.Future[Claim]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def claim(self, request: ClaimRequest) -> Claim:
        future: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
            try:
                results = await self._store.claim_many([req for req, _ in batch])
            except Exception as exc:  # the database failed: every waiter gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, RefInUse):
                    future.set_exception(result)
                else:
                    future.set_result(result)
