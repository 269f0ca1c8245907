"""A redelivered cancel command must get the answer its first delivery got: the command that
cancelled a note is recognised from the note's history, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from notaflow.consumers.lifecycle_events import cancelled_by
from notaflow.envelope import Event
from notaflow.lifecycle import AUTHORIZED, CANCELLED
from notaflow.store import DocumentStore, create_engine, migrate


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[DocumentStore]:
    engine = create_engine(database_url)
    await migrate(engine)
    s = DocumentStore(engine)
    yield s
    s.close()
    await engine.dispose()


async def test_the_cancelling_command_is_recognised(store: DocumentStore) -> None:
    claim = await store.claim("acme", "nfse", "c1", "51916585000125", {}, "emit-1", "test")
    await store.transition(claim.document_id, 1, AUTHORIZED, "test")
    mine = Event(type="br.notaflow.nfse.cancel", source="test", data={}, id="cancel-1")
    other = Event(type="br.notaflow.nfse.cancel", source="test", data={}, id="cancel-2")
    doc = await store.by_id(claim.document_id)
    assert doc is not None and not await cancelled_by(store, doc, mine)
    await store.transition(claim.document_id, 1, CANCELLED, "test", detail={"command_id": mine.id})
    doc = await store.by_id(claim.document_id)
    assert doc is not None
    assert await cancelled_by(store, doc, mine)
    assert not await cancelled_by(store, doc, other)
