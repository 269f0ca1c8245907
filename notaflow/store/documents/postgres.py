"""The document store's PostgreSQL driver layer: each group batch on an asyncpg connection,
its rows as arrays unnested server-side, in one round trip where it can."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

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


def arrays(rows: Sequence[Any], *fields: str) -> list[list[Any]]:
    """A batch as one array per field, in the batch's order: what a statement unnests
    (`unnest($1::text[], ...)`) to work on all its rows in one round trip."""
    return [list(map(attrgetter(name), rows)) for name in fields]


# The claims and the history rows of those inserted in one statement: one round trip, where a
# transaction of two statements took four (BEGIN, the two, COMMIT), each a wake-up of the
# ingress at the rates it mostly sees. One statement is atomic by itself.
_PG_CLAIM = (
    "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
    "$5::text[], $6::text[], $9::text[]) AS u(t, k, r, c, n, p, s)), "
    f"inserted AS (INSERT INTO documents ({INSERT_COLUMNS}) "
    "SELECT t, k, r, $7, 1, c, n, p, $8, $8 FROM u "
    "ON CONFLICT (tenant_id, kind, ref) DO NOTHING RETURNING id, command_id), "
    "recorded AS (INSERT INTO document_events (document_id, attempt, status, source, at) "
    "SELECT i.id, 1, $7, u.s, $8 FROM inserted i JOIN u ON u.c = i.command_id) "
    "SELECT id, command_id FROM inserted"
)


async def claim(driver: Any, requests: list[ClaimRequest], now: datetime) -> dict[str, int]:
    """asyncpg: the whole batch as arrays, unnested server-side, in one round trip."""
    rows = await driver.fetch(
        _PG_CLAIM,
        *arrays(requests, "tenant_id", "kind", "ref", "command_id", "cnpj_prestador"),
        [orjson.dumps(r.payload).decode() for r in requests],
        PROCESSING,
        now,
        [r.source for r in requests],
    )
    return {row["command_id"]: int(row["id"]) for row in rows}


# The same, qualified, for statements that join `documents d` with the batch's arrays.
_PG_COLUMNS = ", ".join("d." + c.strip() for c in SELECT_COLUMNS.split(","))


async def get(driver: Any, keys: list[tuple[str, str, str]]) -> list[Document | None]:
    rows = await driver.fetch(
        f"SELECT {_PG_COLUMNS} "
        "FROM documents d JOIN unnest($1::text[], $2::text[], $3::text[]) AS u(t, k, r) "
        "ON d.tenant_id = u.t AND d.kind = u.k AND d.ref = u.r",
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    )
    found = {(row[1], row[2], row[3]): from_raw(row) for row in rows}
    return [found.get(key) for key in keys]


async def by_provider_refs(driver: Any, refs: list[str]) -> list[Document | None]:
    """Each ref's note: the one that recorded it, or, for a ref of ours not recorded yet, the
    attempt it names (`focus_ref`: Focus may answer before the hand-over is written). That
    second statement only when such a ref was not found by the first."""
    rows = await driver.fetch(
        f"SELECT {_PG_COLUMNS} FROM documents d JOIN unnest($1::text[]) AS u(p) "
        "ON d.provider_ref = u.p",
        refs,
    )
    found = {row[7]: from_raw(row) for row in rows}  # provider_ref is the 8th column
    unrecorded = {
        ref: parts
        for ref in refs
        if ref not in found and (parts := focus_ref_parts(ref)) is not None
    }
    if unrecorded:
        rows = await driver.fetch(
            f"SELECT {_PG_COLUMNS} FROM documents d "
            "JOIN unnest($1::bigint[], $2::int[]) AS u(i, a) ON d.id = u.i AND d.attempt = u.a "
            "WHERE d.provider_ref IS NULL AND d.kind = ANY($3::text[])",
            [parts[0] for parts in unrecorded.values()],
            [parts[1] for parts in unrecorded.values()],
            sorted(FOCUS_KINDS),
        )
        by_attempt = {(row[0], row[5]): from_raw(row) for row in rows}  # id, attempt
        for ref, parts in unrecorded.items():
            if parts in by_attempt:
                found[ref] = by_attempt[parts]
    return [found.get(ref) for ref in refs]


async def update(driver: Any, updates: list[Update], now: datetime) -> list[bool]:
    """asyncpg: one statement, the rows as arrays. A batch never holds two marks of one attempt
    (a handler awaits each before the next, and one document's records run one at a time), so
    the set-based statement means the same as the one-by-one ones."""
    rows = await driver.fetch(
        "UPDATE documents d SET provider_ref = u.p, submitted_at = $4, updated_at = $4 "
        "FROM unnest($1::bigint[], $2::int[], $3::text[]) AS u(i, a, p) "
        "WHERE d.id = u.i AND d.attempt = u.a AND d.submitted_at IS NULL "
        "RETURNING d.id, d.attempt",
        *arrays(updates, "document_id", "attempt", "provider_ref"),
        now,
    )
    done = {(int(r[0]), int(r[1])) for r in rows}
    out: list[bool] = []
    for u in updates:
        key = (u.document_id, u.attempt)
        out.append(key in done)
        done.discard(key)  # a second mark of the same attempt would have found it set
    return out


def waves(document_ids: Sequence[int]) -> list[list[int]]:
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


# One round trip per round of `waves` (almost always one per batch): the conditional UPDATE,
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


async def transition(driver: Any, items: list[Transition], now: datetime) -> list[Document | None]:
    """asyncpg: each round of the batch as arrays in one statement, all in one transaction;
    the usual batch, one round, is one statement and needs none (BEGIN and COMMIT were two of
    its three round trips)."""
    out: list[Document | None] = [None] * len(items)
    rounds = waves([t.document_id for t in items])
    if len(rounds) == 1:
        await _transition_round(driver, items, rounds[0], now, out)
        return out
    async with driver.transaction():
        for wave in rounds:
            await _transition_round(driver, items, wave, now, out)
    return out


async def _transition_round(
    driver: Any, items: list[Transition], wave: list[int], now: datetime, out: list[Document | None]
) -> None:
    batch = [items[n] for n in wave]
    rows = await driver.fetch(
        _PG_TRANSITION,
        now,
        wave,
        *arrays(batch, "document_id", "attempt", "status"),
        [",".join(sorted(t.allowed)) for t in batch],
        *arrays(batch, "result", "erros", "source", "detail"),
    )
    for row in rows:
        out[row["n"]] = from_raw(row)  # the columns of SELECT_COLUMNS come first


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


async def reclaim(driver: Any, items: list[Reclaim], now: datetime) -> list[bool]:
    """asyncpg: one statement per item in one transaction (a rare path), in document order
    (rows lock in one order, as in `waves`), each document's items in arrival order."""
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


async def put_blobs(driver: Any, items: list[Blob], now: datetime) -> list[None]:
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
