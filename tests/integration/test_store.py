"""The state store on both databases (SQLite and PostgreSQL, via `database_url`): migrations,
ref claims (Focus reuse rule), release, transitions guarded by status and attempt, the group
commit queue under concurrency, tenants with hashed tokens, and blobs."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.errors import RefInUse
from notaflow.store import (
    Claim,
    ClaimRequest,
    DocumentStore,
    TenantStore,
    create_engine,
    migrate,
)
from notaflow.store.db import MIGRATIONS, current_revision
from notaflow.store.documents import AUTHORIZED, CANCELLED, ERROR, PROCESSING, TRANSITIONS
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
