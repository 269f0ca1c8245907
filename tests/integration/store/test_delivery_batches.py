"""The notification consumer's store calls in group batches on the driver (deliveries'
`ensure_locked` and `record`, `HookStore.matching`), on SQLite and PostgreSQL: many callers at
once share a batch, and each gets exactly the answer it got when the calls went one by one
through SQLAlchemy (read back through SQLAlchemy here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.store import DeliveryStore, HookStore, create_engine, migrate
from notaflow.store.deliveries import FAILED, PENDING, SENT


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    await migrate(eng)
    yield eng
    await eng.dispose()


async def test_concurrent_ensures_create_each_key_once_locked_and_find_the_rest(
    engine: AsyncEngine,
) -> None:
    store = DeliveryStore(engine)
    try:
        payload = {"body": {"ref": "r1", "nome": "Açaí & Cia", "itens": [1, 2.5, None]}}
        first = await store.ensure_locked(
            "acme", 7, "webhook", "hook:e0:h1", "h1", payload, 120
        )  # a delivery made by an earlier record: the redelivery below finds it
        keys = [f"email:e{i}:x{i}@example.com" for i in range(30)]
        asked = [*keys, keys[3], keys[3], "hook:e0:h1", keys[10]]
        answers = await asyncio.gather(
            *(
                store.ensure_locked("acme", 7, "email", k, k.split(":")[-1], payload, 120)
                for k in asked
            )
        )
        created = [k for k, (_, ours) in zip(asked, answers, strict=True) if ours]
        assert sorted(created) == sorted(keys)  # each new key created once, by one caller
        by_key = {}
        for key, (delivery, _) in zip(asked, answers, strict=True):
            again = await store.by_key(key)  # SQLAlchemy's reading of the same row
            assert delivery == again
            assert by_key.setdefault(key, delivery.id) == delivery.id
        assert answers[-2] == (first[0], False)
        new = answers[0][0]
        assert new.status == PENDING and new.attempts == 0 and new.payload == payload
        assert new.next_attempt_at is not None and new.next_attempt_at.tzinfo is not None
        assert abs((new.next_attempt_at - datetime.now(UTC)).total_seconds()) < 60
        # created locked for 120 s: neither the retry pass nor another replica may take it
        assert not await store.lock(new.id, 30)
        assert [d.id for d in await store.due()] == []
        # without a lock it is due at once, as `ensure` always made it
        plain = await store.ensure("acme", 7, "email", "email:plain:a@b.co", "a@b.co", {})
        assert [d.id for d in await store.due()] == [plain.id]
    finally:
        store.close()


async def test_concurrent_records_count_every_attempt_in_order(engine: AsyncEngine) -> None:
    store = DeliveryStore(engine)
    try:
        made = [
            (await store.ensure_locked("acme", 1, "webhook", f"hook:e{i}:h", "h", {}, 120))[0]
            for i in range(4)
        ]
        later = datetime.now(UTC) + timedelta(minutes=5)
        await asyncio.gather(
            store.record(made[0].id, True, 200, "ok", "example.com", None),
            store.record(made[1].id, False, 503, "HTTP 503", "example.com", later),
            store.record(made[2].id, False, 410, "HTTP 410", "example.com", None),
            # the same delivery twice in one batch: two attempts, in the order asked
            store.record(made[3].id, False, 500, "HTTP 500", "a.example", later),
            store.record(made[3].id, True, 204, "ok", "b.example", None),
        )
        sent, retried, failed, twice = [await store.by_key(d.dedupe_key) for d in made]
        assert sent is not None and (sent.status, sent.attempts, sent.last_error) == (
            SENT, 1, None,
        )  # fmt: skip
        assert retried is not None and (retried.status, retried.last_error) == (
            PENDING, "HTTP 503",
        )  # fmt: skip
        assert retried.next_attempt_at is not None
        assert abs((retried.next_attempt_at - later).total_seconds()) < 0.001
        assert failed is not None and (failed.status, failed.next_attempt_at) == (FAILED, None)
        assert twice is not None and (twice.status, twice.attempts) == (SENT, 2)
        attempts = await store.attempts(made[3].id)
        assert [(a["ok"], a["code"], a["host"]) for a in attempts] == [
            (False, 500, "a.example"),
            (True, 204, "b.example"),
        ]
        assert [a["message"] for a in await store.attempts(made[1].id)] == ["HTTP 503"]
        # unlocked by the record: due when its retry time comes, not before
        assert await store.due() == []
        assert await store.lock(failed.id, 30) is False  # failed for good
    finally:
        store.close()


async def test_concurrent_matching_reads_answer_each_key(engine: AsyncEngine) -> None:
    hooks = HookStore(engine)
    try:
        company = await hooks.create("acme", "nfse", "https://a.example/1", "s1", cnpj="1" * 14)
        wide = await hooks.create("acme", "nfse", "https://a.example/2", "s2", authorization="x")
        other = await hooks.create("acme", "nfse", "https://a.example/3", "s3", cnpj="2" * 14)
        await hooks.create("acme", "nfse", "https://a.example/4", "s4", cpf="1" * 11)
        await hooks.create("acme", "nfce", "https://a.example/5", "s5", cnpj="1" * 14)
        gone = await hooks.create("acme", "nfse", "https://a.example/6", "s6", cnpj="1" * 14)
        await hooks.delete("acme", gone.id)
        theirs = await hooks.create("beta", "nfse", "https://b.example/1", "s7", cnpj="1" * 14)
        keys = [
            ("acme", "nfse", "1" * 14),
            ("acme", "nfse", "2" * 14),
            ("acme", "nfse", "3" * 14),
            ("beta", "nfse", "1" * 14),
            ("acme", "nfse", "1" * 14),
            ("nobody", "nfse", "1" * 14),
        ]
        found = await asyncio.gather(*(hooks.matching(*k) for k in keys))
        ids = [[h.id for h in hs] for hs in found]

        # in the order they were created (created_at, then id), as SQLAlchemy's query said
        assert ids == [
            [company.id, wide.id],
            [wide.id, other.id],
            [wide.id],
            [theirs.id],
            [company.id, wide.id],
            [],
        ]
        # the very hooks SQLAlchemy reads
        assert found[0] == [await hooks.get("acme", i) for i in ids[0]]
        assert found[0][[h.id for h in found[0]].index(wide.id)].authorization == "x"
    finally:
        hooks.close()
