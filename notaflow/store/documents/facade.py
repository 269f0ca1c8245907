"""The document store: documents (one row per tenant + kind + ref) and their status history.

Status changes go through conditional UPDATEs (`WHERE status IN allowed_from AND attempt = n`,
the allowed statuses from `notaflow.lifecycle`), so a duplicate or late event is a no-op rather
than a wrong transition: this, not locking, is what makes redelivery harmless.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from notaflow.batcher import GroupBatcher
from notaflow.errors import RefInUse
from notaflow.lifecycle import PROCESSING, ref_reusable, sources
from notaflow.store.clock import now as _now
from notaflow.store.documents import postgres, sqlite
from notaflow.store.documents.batches import Blob, Reclaim, Transition, Update, json_text
from notaflow.store.documents.model import Claim, ClaimRequest, Document, from_row
from notaflow.store.documents.sqlite import BatchConnection
from notaflow.store.tables import blobs, document_events, documents

_R = TypeVar("_R")


class DocumentStore:
    """The reads and writes of a busy consumer (`get`, `by_provider_ref`, `mark_submitted`,
    `transition`, the re-claim after an error) go through group batches: what concurrent
    handlers ask for in the same moment costs one round trip (PostgreSQL) or one inline
    transaction (SQLite), not one pooled connection, one thread hop and one commit each.
    Callers still get their own answer, after the commit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        sqlite_path = (engine.url.database or "") if engine.dialect.name == "sqlite" else None
        self._sqlite_writer = BatchConnection(sqlite_path) if sqlite_path is not None else None
        # Writers of their own: each is used by one batch at a time (see BatchConnection).
        self._sqlite_updates = BatchConnection(sqlite_path) if sqlite_path is not None else None
        self._sqlite_reader = BatchConnection(sqlite_path) if sqlite_path is not None else None
        self._sqlite_transitions = BatchConnection(sqlite_path) if sqlite_path is not None else None
        self._sqlite_reclaims = BatchConnection(sqlite_path) if sqlite_path is not None else None
        self._sqlite_pref_reader = BatchConnection(sqlite_path) if sqlite_path is not None else None
        self._sqlite_blobs = BatchConnection(sqlite_path) if sqlite_path is not None else None
        self._reads: GroupBatcher[tuple[str, str, str], Document | None] = GroupBatcher(
            self._get_many, self._get_now if sqlite_path is not None else None
        )
        # Writes stay in group batches even on SQLite: a commit each, at once, took a write's
        # latency from ~10 ms to ~0.1 ms but cost ~0.2 ms of CPU per note in the consumer
        # benchmark (a WAL frame per page per commit, and checkpoints that often).
        self._updates: GroupBatcher[Update, bool] = GroupBatcher(self._update_many)
        self._transitions: GroupBatcher[Transition, Document | None] = GroupBatcher(
            self._transition_many
        )
        # Re-claims are rare; the batcher is what keeps their writer to one batch at a time.
        self._reclaims: GroupBatcher[Reclaim, bool] = GroupBatcher(self._reclaim_many)
        # A provider callback's two store calls, batched like the emission's (one per note).
        self._by_pref: GroupBatcher[str, Document | None] = GroupBatcher(
            self._by_provider_refs, self._by_pref_now if sqlite_path is not None else None
        )
        self._blobs: GroupBatcher[Blob, None] = GroupBatcher(self._put_blobs)

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
        writer: BatchConnection | None,
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
        return await self._on_driver(self._sqlite_reader, sqlite.get, postgres.get, keys, read=True)

    def _get_now(self, keys: list[tuple[str, str, str]]) -> list[Document | None] | None:
        assert self._sqlite_reader is not None
        return self._sqlite_reader.now(sqlite.get, keys, transaction=False)

    async def by_id(self, document_id: int) -> Document | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(documents).where(documents.c.id == document_id))
            ).first()
        return from_row(row) if row is not None else None

    async def by_provider_ref(self, provider_ref: str) -> Document | None:
        """The note Focus knows as `provider_ref`: the one whose hand-over recorded it, or, for a
        ref of ours (`lifecycle.focus_ref`) not recorded yet, the attempt it names. Focus may call
        back before the hand-over is written (or after a crash that lost it), and no write before
        the POST is needed for the callback to find its note."""
        return await self._by_pref.submit(provider_ref)

    async def _by_provider_refs(self, refs: list[str]) -> list[Document | None]:
        return await self._on_driver(
            self._sqlite_pref_reader,
            sqlite.by_provider_refs,
            postgres.by_provider_refs,
            refs,
            read=True,
        )

    def _by_pref_now(self, refs: list[str]) -> list[Document | None] | None:
        assert self._sqlite_pref_reader is not None
        return self._sqlite_pref_reader.now(sqlite.by_provider_refs, refs, transaction=False)

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
        return [from_row(r) for r in rows]

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
        request = ClaimRequest(tenant_id, kind, ref, cnpj_prestador, payload, command_id, source)
        if current is not None:
            if (current.tenant_id, current.kind, current.ref) != (tenant_id, kind, ref):
                raise ValueError(f"current is not the document of {tenant_id}/{kind}/{ref}")
            return await self._reclaim(request, current)
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
            return Claim(doc_id, command_id, 1)
        except IntegrityError:
            pass
        return await self._reclaim(request)

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
            self._sqlite_writer, sqlite.claim, postgres.claim, requests, now
        )
        out: list[Claim | RefInUse] = []
        for r in requests:
            if r.command_id in inserted:
                out.append(Claim(inserted[r.command_id], r.command_id, 1))
                continue
            try:
                out.append(await self._reclaim(r))
            except RefInUse as exc:
                out.append(exc)
        return out

    async def _reclaim(self, r: ClaimRequest, current: Document | None = None) -> Claim:
        """Take `r.ref` again when its document allows it (`lifecycle.ref_reusable`)."""
        ref, command_id = r.ref, r.command_id
        if current is None:
            current = await self.get(r.tenant_id, r.kind, ref)
        if current is None:  # deleted by a concurrent release: the caller may simply retry
            raise RefInUse(ref, PROCESSING)
        if not ref_reusable(current.status):
            raise RefInUse(ref, current.status)
        # Serialized here, not in the batch: a payload orjson refuses fails its caller only.
        item = Reclaim(
            current.id,
            current.attempt,
            command_id,
            r.cnpj_prestador,
            orjson.dumps(r.payload).decode(),
            r.source,
        )
        if not await self._reclaims.submit(item):
            raise RefInUse(ref, PROCESSING)
        return Claim(current.id, command_id, current.attempt + 1, current)

    async def _reclaim_many(self, items: list[Reclaim]) -> list[bool]:
        return await self._on_driver(
            self._sqlite_reclaims, sqlite.reclaim, postgres.reclaim, items, _now()
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
        return await self._updates.submit(Update(document_id, attempt, provider_ref))

    async def unmark_submitted(self, document_id: int, attempt: int) -> None:
        """The request surely never reached the provider: it may be sent again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                documents.update()
                .where(documents.c.id == document_id, documents.c.attempt == attempt)
                .values(submitted_at=None, updated_at=_now())
            )

    async def _update_many(self, updates: list[Update]) -> list[bool]:
        return await self._on_driver(
            self._sqlite_updates, sqlite.update, postgres.update, updates, _now()
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
        item = Transition(
            document_id,
            attempt,
            status,
            allowed,
            source,
            json_text(result),
            json_text(erros),
            json_text(detail or erros),
        )
        return await self._transitions.submit(item)

    async def _transition_many(self, items: list[Transition]) -> list[Document | None]:
        return await self._on_driver(
            self._sqlite_transitions, sqlite.transition, postgres.transition, items, _now()
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
        await self._blobs.submit(Blob(path, tenant_id, content_type, data))

    async def _put_blobs(self, items: list[Blob]) -> list[None]:
        return await self._on_driver(
            self._sqlite_blobs, sqlite.put_blobs, postgres.put_blobs, items, _now()
        )

    async def get_blob(self, path: str) -> tuple[str, bytes] | None:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(blobs.c.content_type, blobs.c.data).where(blobs.c.path == path)
                )
            ).first()
        return (row.content_type, row.data) if row is not None else None
