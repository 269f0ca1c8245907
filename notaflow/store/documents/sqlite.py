"""The document store's SQLite driver layer: each group batch as plain statements on a sqlite3
connection of its own (below SQLAlchemy, whose per-statement work and thread hops cost more
than the statements), and that connection (`BatchConnection`).

The rows written here are the ones SQLAlchemy's Core tables read back: JSON as orjson's text,
timestamps in the storage format of its SQLite DateTime."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from notaflow.lifecycle import ERROR, FOCUS_KINDS, PROCESSING, focus_ref_parts
from notaflow.store.documents.batches import Blob, Reclaim, Transition, Update
from notaflow.store.documents.model import (
    INSERT_COLUMNS,
    SELECT_COLUMNS,
    ClaimRequest,
    Document,
    from_raw,
)

_R = TypeVar("_R")


def text_time(value: datetime) -> str:
    # The storage format of SQLAlchemy's SQLite DateTime, so Core reads these rows back.
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def claim(conn: sqlite3.Connection, requests: list[ClaimRequest], now: datetime) -> dict[str, int]:
    at = text_time(now)
    params: list[Any] = []
    for r in requests:
        params += [
            r.tenant_id, r.kind, r.ref, PROCESSING, 1, r.command_id, r.cnpj_prestador,
            orjson.dumps(r.payload).decode(), at, at,
        ]  # fmt: skip
    values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(requests))
    rows = conn.execute(
        f"INSERT INTO documents ({INSERT_COLUMNS}) VALUES {values} "
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


def get(conn: sqlite3.Connection, keys: list[tuple[str, str, str]]) -> list[Document | None]:
    # One indexed lookup per key on one connection: microseconds each, no thread hop.
    sql = f"SELECT {SELECT_COLUMNS} FROM documents WHERE tenant_id = ? AND kind = ? AND ref = ?"
    out: list[Document | None] = []
    for key in keys:
        row = conn.execute(sql, key).fetchone()
        out.append(from_raw(row) if row is not None else None)
    return out


def by_provider_refs(conn: sqlite3.Connection, refs: list[str]) -> list[Document | None]:
    """Each ref's note: the one that recorded it, or, for a ref of ours not recorded yet, the
    attempt it names (`focus_ref`: Focus may answer before the hand-over is written)."""
    sql = f"SELECT {SELECT_COLUMNS} FROM documents WHERE provider_ref = ?"
    out: list[Document | None] = []
    for ref in refs:
        row = conn.execute(sql, (ref,)).fetchone()
        parts = focus_ref_parts(ref) if row is None else None
        if parts is not None:
            row = conn.execute(_UNRECORDED, (*parts, *sorted(FOCUS_KINDS))).fetchone()
        out.append(from_raw(row) if row is not None else None)
    return out


_UNRECORDED = (
    f"SELECT {SELECT_COLUMNS} FROM documents WHERE id = ? AND attempt = ? "
    f"AND provider_ref IS NULL AND kind IN ({', '.join('?' * len(FOCUS_KINDS))})"
)


def update(conn: sqlite3.Connection, updates: list[Update], now: datetime) -> list[bool]:
    # In arrival order, each with its own condition and row count: exactly what the one-by-one
    # statements did, inside one transaction.
    at = text_time(now)
    out: list[bool] = []
    for u in updates:
        cur = conn.execute(
            "UPDATE documents SET provider_ref = ?, submitted_at = ?, updated_at = ? "
            "WHERE id = ? AND attempt = ? AND submitted_at IS NULL",
            (u.provider_ref, at, at, u.document_id, u.attempt),
        )
        out.append(cur.rowcount == 1)
    return out


def transition(
    conn: sqlite3.Connection, items: list[Transition], now: datetime
) -> list[Document | None]:
    # In arrival order, each with its own condition: what the one-by-one statements did, in one
    # transaction. COALESCE keeps the stored result / erros when the transition brings none;
    # RETURNING is the read-back of the updated row.
    at = text_time(now)
    out: list[Document | None] = []
    for t in items:
        allowed = sorted(t.allowed)
        rows = conn.execute(
            "UPDATE documents SET status = ?, updated_at = ?, result = COALESCE(?, result), "
            "erros = COALESCE(?, erros) "
            f"WHERE id = ? AND attempt = ? AND status IN ({','.join('?' * len(allowed))}) "
            f"RETURNING {SELECT_COLUMNS}",
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
        out.append(from_raw(rows[0]))
    return out


def reclaim(conn: sqlite3.Connection, items: list[Reclaim], now: datetime) -> list[bool]:
    # In arrival order: a second re-claim of the same attempt finds the first one's row.
    at = text_time(now)
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


def put_blobs(conn: sqlite3.Connection, items: list[Blob], now: datetime) -> list[None]:
    at = text_time(now)
    conn.executemany(
        "INSERT OR IGNORE INTO blobs (path, tenant_id, content_type, data, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        [(b.path, b.tenant_id, b.content_type, b.data, at) for b in items],
    )
    return [None] * len(items)


class BatchConnection:
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
        self._busy_ms: int | None = None  # the connection's busy_timeout, as last set

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
            self._conn, self._busy_ms = conn, None
        return self._conn

    def _transaction(
        self, work: Callable[..., _R], args: tuple[Any, ...], transaction: bool, busy_ms: int
    ) -> _R:
        conn = self._connection()
        if busy_ms != self._busy_ms:  # a statement per transaction otherwise: 2.5 % of a consumer
            conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            self._busy_ms = busy_ms
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
