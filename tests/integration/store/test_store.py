"""The state store on both databases (SQLite and PostgreSQL, via `database_url`): migrations,
ref claims (Focus reuse rule), release, transitions guarded by status and attempt, the group
commit queue under concurrency, tenants with hashed tokens, and blobs."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.errors import RefInUse
from notaflow.lifecycle import AUTHORIZED, CANCELLED, ERROR, PROCESSING, TRANSITIONS, focus_ref
from notaflow.store import (
    Claim,
    ClaimRequest,
    DeliveryStore,
    Document,
    DocumentStore,
    TenantStore,
    create_engine,
    migrate,
)
from notaflow.store.clock import now
from notaflow.store.db import MIGRATIONS, current_revision
from notaflow.store.documents.model import from_row
from notaflow.store.documents.postgres import waves as _waves
from notaflow.store.tables import document_events, documents, tenant_tokens

CNPJ = "51916585000125"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    await migrate(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def store(engine: AsyncEngine) -> Iterator[DocumentStore]:
    s = DocumentStore(engine)
    yield s
    s.close()


async def claim(
    store: DocumentStore, ref: str, tenant: str = "acme", kind: str = "nfse", **payload: object
) -> Claim:
    return await store.claim(
        tenant, kind, ref, CNPJ, {"ref": ref, **payload}, uuid.uuid4().hex, "test"
    )


def request(ref: str, tenant: str = "acme") -> ClaimRequest:
    return ClaimRequest(
        tenant_id=tenant,
        kind="nfse",
        ref=ref,
        cnpj_prestador=CNPJ,
        payload={"ref": ref},
        command_id=uuid.uuid4().hex,
        source="ingress",
    )


async def count(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


# -- migrations ----------------------------------------------------------------------------


# The newest migration: the files are numbered, and each revision id is its number.
HEAD = max(p.name.split("_")[0] for p in MIGRATIONS.joinpath("versions").glob("[0-9]*.py"))


async def test_migrate_twice_is_a_no_op(engine: AsyncEngine, store: DocumentStore) -> None:
    assert await current_revision(engine) == HEAD
    first = await claim(store, "kept")
    await migrate(engine)
    assert await current_revision(engine) == HEAD
    doc = await store.get("acme", "nfse", "kept")
    assert doc is not None and doc.id == first.document_id


# -- claims --------------------------------------------------------------------------------


async def test_claim_then_ref_in_use_with_the_holders_status(store: DocumentStore) -> None:
    c = await claim(store, "r1", valor=10)
    assert (c.attempt, c.previous) == (1, None)
    doc = await store.get("acme", "nfse", "r1")
    assert doc is not None
    assert (doc.id, doc.status, doc.attempt, doc.command_id) == (
        c.document_id,
        PROCESSING,
        1,
        c.command_id,
    )
    assert doc.payload == {"ref": "r1", "valor": 10}
    assert doc.created_at.tzinfo is not None

    with pytest.raises(RefInUse) as info:
        await claim(store, "r1")
    assert (info.value.ref, info.value.status) == ("r1", PROCESSING)

    assert await store.transition(c.document_id, 1, AUTHORIZED, "focus") is not None
    with pytest.raises(RefInUse) as info:
        await claim(store, "r1")
    assert info.value.status == AUTHORIZED

    # The ref is unique per tenant and kind only.
    assert (await claim(store, "r1", tenant="other")).attempt == 1
    assert (await claim(store, "r1", kind="nfce")).attempt == 1


async def test_reuse_after_error_increments_attempt(store: DocumentStore) -> None:
    first = await claim(store, "r1", valor=1)
    assert await store.mark_submitted(first.document_id, 1, "focus-r1-a")
    erros = [{"codigo": "E145", "mensagem": "CNPJ inválido"}]
    assert await store.transition(first.document_id, 1, ERROR, "focus", erros=erros) is not None

    second = await claim(store, "r1", valor=2)
    assert second.document_id == first.document_id
    assert second.attempt == 2
    assert second.previous is not None
    assert second.previous["status"] == ERROR
    assert second.previous["erros"] == erros
    doc = await store.get("acme", "nfse", "r1")
    assert doc is not None
    assert (doc.status, doc.attempt, doc.command_id) == (PROCESSING, 2, second.command_id)
    assert doc.payload == {"ref": "r1", "valor": 2}
    assert (doc.erros, doc.result, doc.provider_ref, doc.submitted_at) == (None, {}, None, None)

    with pytest.raises(RefInUse):
        await claim(store, "r1")


async def test_release_undoes_a_new_claim(engine: AsyncEngine, store: DocumentStore) -> None:
    c = await claim(store, "r1")
    await store.release(c)
    assert await store.get("acme", "nfse", "r1") is None
    assert await store.history(c.document_id) == []
    assert await count(engine, documents) == 0
    assert (await claim(store, "r1")).attempt == 1  # free again


async def test_release_undoes_a_reuse(store: DocumentStore) -> None:
    first = await claim(store, "r1", valor=1)
    assert await store.mark_submitted(first.document_id, 1, "focus-r1-a")
    assert not await store.mark_submitted(first.document_id, 1, "focus-r1-b")  # once per attempt
    erros = [{"codigo": "E145", "mensagem": "CNPJ inválido"}]
    await store.transition(first.document_id, 1, ERROR, "focus", result={"x": 1}, erros=erros)
    before = await store.get("acme", "nfse", "r1")
    assert before is not None and before.submitted_at is not None

    second = await claim(store, "r1", valor=2)
    await store.release(second)

    after = await store.get("acme", "nfse", "r1")
    assert after is not None
    fields = ("status", "attempt", "command_id", "payload", "provider_ref", "result", "erros")
    assert {f: getattr(after, f) for f in fields} == {f: getattr(before, f) for f in fields}
    assert after.submitted_at == before.submitted_at
    assert [(h["attempt"], h["status"]) for h in await store.history(first.document_id)] == [
        (1, PROCESSING),
        (1, ERROR),
    ]
    # ...and the ref can be reused again, as attempt 2.
    assert (await claim(store, "r1")).attempt == 2


async def test_transitions_follow_the_table_and_duplicates_are_no_ops(
    store: DocumentStore,
) -> None:
    c = await claim(store, "r1")
    doc_id = c.document_id
    assert await store.transition(doc_id, 1, CANCELLED, "focus") is None  # not from processing
    with pytest.raises(ValueError):
        await store.transition(doc_id, 1, PROCESSING, "focus")

    authorized = await store.transition(doc_id, 1, AUTHORIZED, "focus", result={"numero": "7"})
    assert authorized is not None
    assert (authorized.status, authorized.result) == (AUTHORIZED, {"numero": "7"})
    assert await store.transition(doc_id, 1, AUTHORIZED, "focus-dup") is None
    assert await store.transition(doc_id, 1, ERROR, "focus") is None  # autorizado is final-ish
    assert await store.transition(doc_id, 2, CANCELLED, "focus") is None  # wrong attempt
    cancelled = await store.transition(doc_id, 1, CANCELLED, "api")
    assert cancelled is not None and cancelled.status == CANCELLED
    assert cancelled.result == {"numero": "7"}  # kept when the transition brings no result
    assert await store.transition(doc_id, 1, CANCELLED, "api") is None
    assert await store.transition(doc_id, 1, AUTHORIZED, "focus") is None

    history = await store.history(doc_id)
    assert [(h["attempt"], h["status"], h["source"]) for h in history] == [
        (1, PROCESSING, "test"),
        (1, AUTHORIZED, "focus"),
        (1, CANCELLED, "api"),
    ]
    assert [h["id"] for h in history] == sorted(h["id"] for h in history)


@pytest.mark.parametrize(("target", "sources"), sorted(TRANSITIONS.items()))
async def test_every_transition_in_the_table_is_reachable_and_no_other(
    store: DocumentStore, target: str, sources: frozenset[str]
) -> None:
    # Build a document in each possible status and try `target` from each.
    for status in (PROCESSING, AUTHORIZED, ERROR, CANCELLED):
        ref = f"{target}-from-{status}"
        c = await claim(store, ref)
        path = {
            PROCESSING: [],
            AUTHORIZED: [AUTHORIZED],
            ERROR: [ERROR],
            CANCELLED: [AUTHORIZED, CANCELLED],
        }[status]
        for step in path:
            assert await store.transition(c.document_id, 1, step, "setup") is not None
        moved = await store.transition(c.document_id, 1, target, "test")
        assert (moved is not None) == (status in sources), (status, target)


async def test_late_callback_for_an_old_attempt_changes_nothing(store: DocumentStore) -> None:
    first = await claim(store, "r1")
    await store.transition(first.document_id, 1, ERROR, "focus", erros=[{"codigo": "E1"}])
    second = await claim(store, "r1")
    assert second.attempt == 2

    # Attempt 1's callback arrives late (Focus retries hooks): it must not touch attempt 2.
    assert await store.transition(first.document_id, 1, AUTHORIZED, "focus") is None
    assert await store.transition(first.document_id, 1, ERROR, "focus") is None
    doc = await store.get("acme", "nfse", "r1")
    assert doc is not None and (doc.status, doc.attempt) == (PROCESSING, 2)

    done = await store.transition(first.document_id, 2, AUTHORIZED, "focus")
    assert done is not None and (done.status, done.attempt) == (AUTHORIZED, 2)
    assert [(h["attempt"], h["status"]) for h in await store.history(first.document_id)] == [
        (1, PROCESSING),
        (1, ERROR),
        (2, PROCESSING),
        (2, AUTHORIZED),
    ]


async def test_lookups_by_id_provider_ref_and_stuck(store: DocumentStore) -> None:
    c = await claim(store, "r1")
    await store.mark_submitted(c.document_id, 1, "focus-xyz")
    by_id = await store.by_id(c.document_id)
    by_ref = await store.by_provider_ref("focus-xyz")
    assert by_id is not None and by_ref is not None and by_id.id == by_ref.id == c.document_id
    assert await store.by_id(c.document_id + 1000) is None
    assert await store.by_provider_ref("nope") is None
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert [d.id for d in await store.stuck(PROCESSING, later)] == [c.document_id]
    assert await store.stuck(PROCESSING, datetime.now(UTC) - timedelta(hours=1)) == []
    assert await store.stuck(AUTHORIZED, later) == []


# -- group commit ----------------------------------------------------------------------------


async def test_claim_many_one_winner_per_ref(engine: AsyncEngine, store: DocumentStore) -> None:
    refs = [f"r{i}" for i in range(180)]
    duplicated = refs[::9]  # 20 refs requested twice in the same batch
    requests = [request(r) for r in refs] + [request(r) for r in duplicated]
    results = await store.claim_many(requests)
    winners = {
        req.ref for req, res in zip(requests, results, strict=True) if isinstance(res, Claim)
    }
    losers = [
        (req.ref, res.status)
        for req, res in zip(requests, results, strict=True)
        if isinstance(res, RefInUse)
    ]
    assert winners == set(refs)
    assert sorted(losers) == sorted((r, PROCESSING) for r in duplicated)
    assert await count(engine, documents) == 180
    assert await count(engine, document_events) == 180
    assert await store.claim_many([]) == []


async def test_claim_many_mixes_new_reused_and_busy_refs(store: DocumentStore) -> None:
    failed = await claim(store, "failed")
    await store.transition(failed.document_id, 1, ERROR, "focus", erros=[{"codigo": "E1"}])
    await claim(store, "busy")
    done = await claim(store, "done")
    await store.transition(done.document_id, 1, AUTHORIZED, "focus")

    reqs = [request("new-1"), request("failed"), request("busy"), request("new-2"), request("done")]
    out = await store.claim_many(reqs)

    assert isinstance(out[0], Claim) and (out[0].attempt, out[0].previous) == (1, None)
    assert isinstance(out[1], Claim) and out[1].document_id == failed.document_id
    assert out[1].attempt == 2 and out[1].previous is not None
    assert isinstance(out[2], RefInUse) and out[2].status == PROCESSING
    assert isinstance(out[3], Claim) and out[3].attempt == 1
    assert isinstance(out[4], RefInUse) and out[4].status == AUTHORIZED
    for req, result in zip(reqs, out, strict=True):
        if isinstance(result, Claim):
            doc = await store.get("acme", "nfse", req.ref)
            assert doc is not None
            assert (doc.status, doc.command_id, doc.attempt) == (
                PROCESSING,
                req.command_id,
                result.attempt,
            )
            assert (await store.history(doc.id))[-1]["source"] == "ingress"


# -- transitions and re-claims on the driver ------------------------------------------------


async def core_transition(
    engine: AsyncEngine,
    document_id: int,
    attempt: int,
    status: str,
    source: str,
    result: dict[str, Any] | None = None,
    erros: list[dict[str, Any]] | None = None,
    detail: Any = None,
) -> Document | None:
    """`transition` as it was through SQLAlchemy Core: the reference that the driver path must
    match, value for value and stored text for stored text."""
    at = now()
    values: dict[str, Any] = {"status": status, "updated_at": at}
    if result is not None:
        values["result"] = result
    if erros is not None:
        values["erros"] = erros
    async with engine.begin() as conn:
        res = await conn.execute(
            documents.update()
            .where(
                documents.c.id == document_id,
                documents.c.attempt == attempt,
                documents.c.status.in_(TRANSITIONS[status]),
            )
            .values(**values)
        )
        if res.rowcount != 1:
            return None
        await conn.execute(
            document_events.insert().values(
                document_id=document_id,
                attempt=attempt,
                status=status,
                source=source,
                detail=detail or erros,
                at=at,
            )
        )
        row = (await conn.execute(sa.select(documents).where(documents.c.id == document_id))).one()
    return from_row(row)


def shape(value: object) -> object:
    """A stored value with its digits blanked: same text format, same type, same awareness."""
    if isinstance(value, str):
        return re.sub(r"\d", "9", value)
    if isinstance(value, datetime):
        return ("datetime", value.tzinfo is not None)
    return value


async def stored(engine: AsyncEngine, document_id: int) -> dict[str, Any]:
    """What is in the tables for one document, as the database hands it back (no type
    processing: JSON as its text, NULL as None, SQLite's timestamps as their text)."""
    async with engine.connect() as conn:
        doc = (
            await conn.execute(
                sa.text(
                    "SELECT status, attempt, result, erros, updated_at FROM documents "
                    "WHERE id = :id"
                ),
                {"id": document_id},
            )
        ).one()
        events = (
            await conn.execute(
                sa.text(
                    "SELECT attempt, status, source, detail, at FROM document_events "
                    "WHERE document_id = :id ORDER BY id"
                ),
                {"id": document_id},
            )
        ).all()
    return {
        "document": (doc[0], doc[1], doc[2], doc[3], shape(doc[4])),
        "events": [(e[0], e[1], e[2], e[3], shape(e[4])) for e in events],
    }


def comparable(doc: Document | None) -> object:
    # What two documents with different ids, refs and clocks must share.
    if doc is None:
        return None
    return (doc.status, doc.attempt, doc.result, doc.erros, doc.submitted_at is None)


def history_comparable(history: Sequence[dict[str, Any]]) -> list[object]:
    return [(h["attempt"], h["status"], h["source"], h["detail"], shape(h["at"])) for h in history]


async def test_concurrent_transitions_match_the_core_path(
    engine: AsyncEngine, store: DocumentStore
) -> None:
    # Each document has a twin that takes the same transitions, one by one, through the Core
    # statements `transition` used to run.
    n = 50
    claims = await store.claim_many([request(f"d{i}") for i in range(n)])
    twins = await store.claim_many([request(f"twin{i}") for i in range(n)])
    ids = [c.document_id for c in claims if isinstance(c, Claim)]
    twin_ids = [c.document_id for c in twins if isinstance(c, Claim)]
    assert len(ids) == len(twin_ids) == n
    for doc_id in (*ids[::2], *twin_ids[::2]):
        assert await store.mark_submitted(doc_id, 1, f"focus-{doc_id}")

    erros = [{"codigo": "E145", "mensagem": "CNPJ inválido", "correcao": None}]
    calls: list[tuple[int, tuple[Any, ...], dict[str, Any]]] = []
    for i in range(n):
        if i % 5 == 0:
            kw: dict[str, Any] = {"result": {"numero": str(i), "serie": None}}
            calls.append((i, (1, AUTHORIZED, "focus"), kw))
        elif i % 5 == 1:
            calls.append((i, (1, ERROR, "focus"), {"erros": erros}))
        elif i % 5 == 2:
            kw = {"result": {"status_sefaz": "100"}, "detail": {"mensagem": "ok", "n": i}}
            calls.append((i, (1, AUTHORIZED, "focus"), kw))
        elif i % 5 == 3:
            calls.append((i, (1, ERROR, "focus"), {"erros": erros, "detail": ["a", 1, None]}))
        else:
            calls.append((i, (1, AUTHORIZED, "focus"), {"detail": {}}))  # detail {} -> NULL
    for i in range(0, n, 7):  # duplicates of applied changes, in the same batches: no-ops
        calls.append((i, (1, AUTHORIZED, "focus-dup"), {}))
    for i in range(0, n, 10):  # cancelled right after being authorized, in the same batch
        calls.append((i, (1, CANCELLED, "api"), {"detail": {"motivo": "teste"}}))
    for i in range(3, n, 10):  # not allowed: from the wrong status, or the wrong attempt
        calls.append((i, (1, CANCELLED, "api"), {}))
        calls.append((i, (2, ERROR, "focus"), {"erros": erros}))

    batches: list[int] = []
    run = store._transitions._run

    async def counting(items: list[Any]) -> Sequence[Document | None]:
        batches.append(len(items))
        return await run(items)

    store._transitions._run = counting  # type: ignore[method-assign]
    got = await asyncio.gather(*(store.transition(ids[i], *args, **kw) for i, args, kw in calls))
    assert max(batches) > 1, batches  # the calls did share batches
    expected = [await core_transition(engine, twin_ids[i], *args, **kw) for i, args, kw in calls]

    assert [comparable(d) for d in got] == [comparable(d) for d in expected]
    assert sum(d is not None for d in got) == n + len(range(0, n, 10))
    last: dict[int, Document] = {}
    for (i, _, _), doc in zip(calls, got, strict=True):
        if doc is not None:
            assert doc.id == ids[i] and doc.updated_at.tzinfo is not None
            last[i] = doc
    for i in range(n):
        doc_id, twin_id = ids[i], twin_ids[i]
        # The document returned is the row as it was committed, read as Core reads it.
        assert await store.by_id(doc_id) == last[i]
        history, twin_history = await store.history(doc_id), await store.history(twin_id)
        assert history_comparable(history) == history_comparable(twin_history)
        assert len(history) == (3 if i % 10 == 0 else 2)  # processing, the outcome, cancelled
        assert await stored(engine, doc_id) == await stored(engine, twin_id)
    # The detail rule (`detail or erros`; None, and {}, stored as NULL, not JSON null).
    async with engine.connect() as conn:
        details = (
            await conn.execute(
                sa.text("SELECT detail FROM document_events WHERE document_id = :id ORDER BY id"),
                {"id": ids[4]},
            )
        ).all()
    assert [d[0] for d in details] == [None, None]


def test_waves_keep_each_documents_order_and_lock_in_document_order() -> None:
    ids = [5, 3, 5, 1, 3, 5, 2]
    waves = _waves(ids)
    assert waves == [[3, 6, 1, 0], [4, 2], [5]]
    for wave in waves:
        assert len({ids[n] for n in wave}) == len(wave)
    assert _waves([]) == []


async def test_transition_without_result_or_erros_keeps_the_stored_ones(
    engine: AsyncEngine, store: DocumentStore
) -> None:
    c = await claim(store, "r1")
    erros = [{"codigo": "A1", "mensagem": "aviso"}]
    result = {"numero": "7", "caminho_xml_nota_fiscal": "/x.xml"}
    authorized = await store.transition(c.document_id, 1, AUTHORIZED, "focus", result, erros)
    assert authorized is not None and (authorized.result, authorized.erros) == (result, erros)
    before = await stored(engine, c.document_id)

    cancelled = await store.transition(c.document_id, 1, CANCELLED, "api")
    assert cancelled is not None
    assert (cancelled.status, cancelled.result, cancelled.erros) == (CANCELLED, result, erros)
    after = await stored(engine, c.document_id)
    assert after["document"][2:4] == before["document"][2:4]  # the very same stored text
    assert await store.by_id(c.document_id) == cancelled

    # And a document that never had any keeps NULL, not an empty object.
    other = await claim(store, "r2")
    assert await store.transition(other.document_id, 1, AUTHORIZED, "focus") is not None
    assert (await stored(engine, other.document_id))["document"][2:4] == (None, None)


async def test_claim_with_the_current_document_after_an_error(
    engine: AsyncEngine, store: DocumentStore
) -> None:
    first = await claim(store, "r1", valor=1)
    assert await store.mark_submitted(first.document_id, 1, "focus-r1-a")
    erros = [{"codigo": "E145", "mensagem": "CNPJ inválido"}]
    await store.transition(first.document_id, 1, ERROR, "focus", result={"x": 1}, erros=erros)
    current = await store.get("acme", "nfse", "r1")
    assert current is not None and current.status == ERROR

    second = await store.claim(
        "acme", "nfse", "r1", CNPJ, {"ref": "r1", "valor": 2}, "cmd-2", "emission", current=current
    )
    assert (second.document_id, second.command_id, second.attempt) == (
        first.document_id,
        "cmd-2",
        2,
    )
    assert second.previous == {
        "status": ERROR,
        "attempt": 1,
        "command_id": first.command_id,
        "cnpj_prestador": CNPJ,
        "payload": {"ref": "r1", "valor": 1},
        "provider_ref": "focus-r1-a",
        "result": {"x": 1},
        "erros": erros,
        "submitted_at": current.submitted_at,
    }
    doc = await store.get("acme", "nfse", "r1")
    assert doc is not None and doc == await store.by_id(first.document_id)
    assert (doc.status, doc.attempt, doc.command_id, doc.payload) == (
        PROCESSING,
        2,
        "cmd-2",
        {"ref": "r1", "valor": 2},
    )
    assert (doc.erros, doc.result, doc.provider_ref, doc.submitted_at) == (None, {}, None, None)
    assert doc.updated_at.tzinfo is not None and doc.updated_at >= current.updated_at
    history = await store.history(first.document_id)
    assert [(h["attempt"], h["status"], h["source"], h["detail"]) for h in history] == [
        (1, PROCESSING, "test", None),
        (1, ERROR, "focus", erros),
        (2, PROCESSING, "emission", None),
    ]
    raw = await stored(engine, first.document_id)
    assert raw["document"][2:4] == (None, None)  # NULL, as the Core re-claim wrote them

    # `current` is now stale (attempt 1; the row is at attempt 2): refused, nothing changed,
    # whether the row is still processing or back in erro_autorizacao at the next attempt.
    with pytest.raises(RefInUse) as info:
        await store.claim("acme", "nfse", "r1", CNPJ, {}, "cmd-3", "emission", current=current)
    assert (info.value.ref, info.value.status) == ("r1", PROCESSING)
    assert await stored(engine, first.document_id) == raw
    await store.transition(first.document_id, 2, ERROR, "focus", erros=erros)
    raw = await stored(engine, first.document_id)
    with pytest.raises(RefInUse) as info:
        await store.claim("acme", "nfse", "r1", CNPJ, {}, "cmd-3", "emission", current=current)
    assert info.value.status == PROCESSING
    assert await stored(engine, first.document_id) == raw

    # Two handlers holding the same fresh read: one wins, the other finds the ref taken.
    fresh = await store.get("acme", "nfse", "r1")
    assert fresh is not None and fresh.attempt == 2
    results = await asyncio.gather(
        *(
            store.claim("acme", "nfse", "r1", CNPJ, {}, f"cmd-{k}", "e", current=fresh)
            for k in (4, 5)
        ),
        return_exceptions=True,
    )
    assert isinstance(results[0], Claim) and results[0].attempt == 3
    assert isinstance(results[1], RefInUse) and results[1].status == PROCESSING
    assert [h["attempt"] for h in await store.history(first.document_id)][-2:] == [2, 3]

    # A current that is not in erro_autorizacao is refused with its status, as without it.
    done = await claim(store, "r2")
    authorized = await store.transition(done.document_id, 1, AUTHORIZED, "focus")
    assert authorized is not None
    with pytest.raises(RefInUse) as info:
        await store.claim("acme", "nfse", "r2", CNPJ, {}, "c", "e", current=authorized)
    assert info.value.status == AUTHORIZED
    with pytest.raises(ValueError):  # another ref's document
        await store.claim("acme", "nfse", "r1", CNPJ, {}, "c", "e", current=authorized)


# -- tenants -------------------------------------------------------------------------------


async def test_tenants_tokens_are_hashed_and_revocable(engine: AsyncEngine) -> None:
    tenants = TenantStore(engine)
    token = await tenants.create("acme", "ACME Ltda", [CNPJ])
    other_token = await tenants.create("other", "Other SA", ["07504505000132"])
    assert len(token) >= 32 and token != other_token

    acme = await tenants.by_token(token)
    assert acme is not None
    assert (acme.id, acme.name, acme.cnpjs) == ("acme", "ACME Ltda", frozenset({CNPJ}))
    other = await tenants.by_token(other_token)
    assert other is not None and other.id == "other"
    assert await tenants.by_token(token + "x") is None
    assert await tenants.by_token("") is None

    async with engine.connect() as conn:
        rows = [dict(r._mapping) for r in (await conn.execute(sa.select(tenant_tokens))).all()]
    stored = repr(rows)
    assert token not in stored and other_token not in stored
    assert hashlib.sha256(token.encode()).hexdigest() in {r["token_hash"] for r in rows}

    # A second token for the same tenant, adding a company; both tokens work.
    second = await tenants.create("acme", "ACME Ltda", [CNPJ, "07504505000132"])
    for t in (token, second):
        found = await tenants.by_token(t)
        assert found is not None and found.cnpjs == frozenset({CNPJ, "07504505000132"})
    got = await tenants.get("acme")
    assert got is not None and got.cnpjs == frozenset({CNPJ, "07504505000132"})
    assert await tenants.get("nobody") is None

    assert await tenants.revoke(token)
    assert await tenants.by_token(token) is None
    assert await tenants.by_token(second) is not None
    assert not await tenants.revoke("never-issued")

    # An operator-chosen token is returned as given (and stored hashed too).
    assert await tenants.create("demo", "Demo", [], token="demo-token-123") == "demo-token-123"
    demo = await tenants.by_token("demo-token-123")
    assert demo is not None and demo.cnpjs == frozenset()


# -- blobs ---------------------------------------------------------------------------------


async def test_blobs_put_get_idempotent(store: DocumentStore) -> None:
    data = bytes(range(256)) * 4
    await store.put_blob("acme/nfse/r1.xml", "acme", "application/xml", data)
    await store.put_blob("acme/nfse/r1.xml", "acme", "text/plain", b"second write ignored")
    assert await store.get_blob("acme/nfse/r1.xml") == ("application/xml", data)
    assert await store.get_blob("acme/nfse/missing.xml") is None


async def test_a_delivery_is_not_taken_before_its_retry_time(engine: AsyncEngine) -> None:
    """A redelivered Kafka record finds the delivery it created pending: it may attempt it only
    once its retry time has come, as the retry loop would."""
    store = DeliveryStore(engine)
    fresh = await store.ensure("acme", 1, "webhook", "hook:e1:h1", "h1", {"body": {}})
    assert await store.lock(fresh.id, 30)  # new: due at once
    later = datetime.now(UTC) + timedelta(minutes=30)
    await store.record(fresh.id, False, 500, "HTTP 500", "example.com", later)
    again = await store.ensure("acme", 1, "webhook", "hook:e1:h1", "h1", {"body": {}})
    assert again.id == fresh.id and again.status == "pending"
    assert not await store.lock(again.id, 30)  # the redelivery: not yet
    assert [d.id for d in await store.due()] == []
    await store.record(fresh.id, False, 500, "HTTP 500", "example.com", datetime.now(UTC))
    assert await store.lock(fresh.id, 30)  # due now
    assert not await store.lock(fresh.id, 30)  # and taken by one caller only


async def test_a_ref_of_ours_finds_the_attempt_it_names_before_its_hand_over(
    store: DocumentStore,
) -> None:
    """Focus may call back before the hand-over records the ref (nothing is written before the
    POST): `N{id}A{attempt}` finds that attempt of an NFS-e while its ref is unrecorded, and
    nothing else: not another attempt, not an NFC-e, not a note recorded under another ref,
    in one batch with recorded refs and unknown ones."""
    fresh = await claim(store, "u1")
    handed = await claim(store, "u2")
    await store.mark_submitted(handed.document_id, 1, focus_ref(handed.document_id, 1))
    other_ref = await claim(store, "u3")
    await store.mark_submitted(other_ref.document_id, 1, "focus-legacy-u3")
    nfce = await claim(store, "u4", kind="nfce")
    refs = [
        focus_ref(fresh.document_id, 1),  # unrecorded: found by the attempt it names
        focus_ref(handed.document_id, 1),  # recorded
        focus_ref(fresh.document_id, 2),  # an attempt the note has not made
        focus_ref(other_ref.document_id, 1),  # the note went to Focus under another ref
        focus_ref(nfce.document_id, 1),  # an NFC-e never goes to Focus
        focus_ref(10**9, 1),  # no such note
        "focus-legacy-u3",
        "N999999999999999999A999999999",  # the largest a ref of ours can name: no overflow
    ]
    found = await asyncio.gather(*(store.by_provider_ref(r) for r in refs))
    assert [d.ref if d else None for d in found] == ["u1", "u2", None, None, None, None, "u3", None]
    assert found[0] is not None and found[0].provider_ref is None
    # Once handed over, the same ref finds it by the recorded value, as before.
    assert await store.mark_submitted(fresh.document_id, 1, refs[0])
    again = await store.by_provider_ref(refs[0])
    assert again is not None and (again.ref, again.provider_ref) == ("u1", refs[0])


async def test_callback_lookups_and_blobs_in_concurrent_batches(store: DocumentStore) -> None:
    """What a provider callback does, many at once (they share batches): find the note by the
    provider's ref, store its XML; the first copy of a blob wins, even inside one batch."""
    claims = [await claim(store, f"cb{i}") for i in range(20)]
    for c in claims:
        await store.mark_submitted(c.document_id, c.attempt, f"P{c.document_id}")
    refs = [f"P{c.document_id}" for c in claims] + ["unknown-1", "unknown-2"]
    found = await asyncio.gather(*(store.by_provider_ref(r) for r in refs))
    assert [d.id if d else None for d in found] == [c.document_id for c in claims] + [None, None]
    assert all(d is not None and d.ref == f"cb{i}" for i, d in enumerate(found[:20]))

    writes = [(f"acme/{r}.xml", f"<n>{r}</n>".encode()) for r in refs[:20]]
    repeats = [(path, b"later copy") for path, _ in writes[:5]]
    await asyncio.gather(
        *(store.put_blob(p, "acme", "application/xml", d) for p, d in writes + repeats)
    )
    for path, data in writes:
        assert await store.get_blob(path) == ("application/xml", data)
