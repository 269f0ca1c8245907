"""The lifecycle stream never goes backwards for a note (issue 13): a status is published only
if it is still the note's current state when it goes out. Real broker, both databases."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from notaflow.bus import Bus, ensure_topics
from notaflow.consumers.lifecycle_events import publish_if_current
from notaflow.envelope import Event
from notaflow.lifecycle import AUTHORIZED, CANCELLED, ERROR
from notaflow.settings import Settings
from notaflow.store import DocumentStore, create_engine, migrate
from notaflow.topics import Topics
from tests.integration.runtime.test_runner import read_all

CAUSE = Event(type="br.notaflow.nfse.emit", source="test", data={}, id="emit-1")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[DocumentStore]:
    engine = create_engine(database_url)
    await migrate(engine)
    s = DocumentStore(engine)
    yield s
    s.close()
    await engine.dispose()


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    await ensure_topics(settings, Topics(settings.kafka_topic_prefix).all())
    b = Bus(settings)
    await b.start()
    await b.wait_connected(10)
    yield b
    await b.stop()


async def test_a_status_read_before_the_note_moved_on_is_not_published(
    store: DocumentStore, bus: Bus, settings: Settings
) -> None:
    topics = Topics(settings.kafka_topic_prefix)
    claim = await store.claim("acme", "nfse", "r1", "51916585000125", {}, "emit-1", "test")
    processing = await store.get("acme", "nfse", "r1")
    assert processing is not None
    # The command read the note, then went to Focus; meanwhile its callback was applied.
    authorized = await store.transition(claim.document_id, 1, AUTHORIZED, "test")
    assert authorized is not None
    assert not await publish_if_current(bus, topics, store, processing, "test", CAUSE)
    assert await publish_if_current(bus, topics, store, authorized, "test", CAUSE)
    # And a cancellation after it: the authorization's late copy stays out too.
    cancelled = await store.transition(claim.document_id, 1, CANCELLED, "test")
    assert cancelled is not None
    assert not await publish_if_current(bus, topics, store, authorized, "test", CAUSE)
    assert await publish_if_current(bus, topics, store, cancelled, "test", CAUSE)
    records = await read_all(settings, topics.lifecycle, 2)
    assert [json.loads(r.value)["status"] for r in records] == [AUTHORIZED, CANCELLED]
    # The status in the `ce_status` header as well, for consumers that skip by it.
    assert [dict(r.headers)["ce_status"] for r in records] == [b"autorizado", b"cancelado"]


async def test_an_earlier_attempt_is_not_published_after_a_re_emission(
    store: DocumentStore, bus: Bus, settings: Settings
) -> None:
    topics = Topics(settings.kafka_topic_prefix)
    first = await store.claim("acme", "nfse", "r2", "51916585000125", {}, "emit-1", "test")
    refused = await store.transition(first.document_id, 1, ERROR, "test")
    assert refused is not None
    # The ref is reused after erro_autorizacao: attempt 2 is processing now.
    await store.claim("acme", "nfse", "r2", "51916585000125", {}, "emit-2", "test", current=refused)
    assert not await publish_if_current(bus, topics, store, refused, "test", CAUSE)
    assert await read_all(settings, topics.lifecycle, 1, timeout=1) == []
