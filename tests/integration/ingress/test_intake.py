"""The ingress's group commit (claim + publish for many requests at once) on both databases
and the real broker: one winner per ref, every winner's command in Kafka, nothing left
claimed when Kafka does not acknowledge, and a re-emission after an error publishes that
error's lifecycle event again, ahead of its command."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from notaflow.bus import Bus, ensure_topics
from notaflow.envelope import Event, decode
from notaflow.errors import BusUnavailable, RefInUse
from notaflow.ingress.intake import Intake
from notaflow.launch.broker import free_port
from notaflow.lifecycle import ERROR, PROCESSING
from notaflow.settings import Settings
from notaflow.store import Claim, ClaimRequest, DocumentStore, create_engine, migrate
from notaflow.topics import document_key


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[DocumentStore]:
    engine = create_engine(database_url)
    await migrate(engine)
    s = DocumentStore(engine)
    yield s
    s.close()
    await engine.dispose()


def item(ref: str) -> tuple[ClaimRequest, Event, bytes]:
    command_id = str(uuid.uuid4())
    req = ClaimRequest("acme", "nfse", ref, "51916585000125", {"ref": ref}, command_id, "test")
    event = Event(type="t", source="test", data={"ref": ref}, id=command_id)
    return req, event, document_key("acme", "nfse", ref)


async def records_in(settings: Settings, topic: str) -> list[str]:
    return [e.id for e in await events_in(settings, topic)]


async def events_in(settings: Settings, topic: str) -> list[Event]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        events: list[Event] = []
        while any([await consumer.position(tp) < ends[tp] for tp in parts]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                events += [decode(r.headers, r.value) for r in records]
        return events
    finally:
        await consumer.stop()


@pytest.mark.parametrize("max_batch", [256, 7])
async def test_one_winner_per_ref_and_every_winner_published(
    store: DocumentStore, settings: Settings, max_batch: int
) -> None:
    topic = settings.kafka_topic_prefix + "commands"
    await ensure_topics(settings, [topic])
    bus = Bus(settings)
    await bus.start()
    await bus.wait_connected(10)
    intake = Intake(store, bus, topic, settings.kafka_topic_prefix + "lifecycle", max_batch)
    refs = [f"r{i}" for i in range(150)] + [f"r{i}" for i in range(0, 150, 10)]
    items = [item(r) for r in refs]
    try:
        results = await asyncio.gather(
            *(intake.submit(*it) for it in items), return_exceptions=True
        )
    finally:
        await bus.stop()
    won = [it for it, res in zip(items, results, strict=True) if isinstance(res, Claim)]
    lost = [res for res in results if isinstance(res, RefInUse)]
    assert len(won) == 150 and len(lost) == 15
    assert {it[0].ref for it in won} == {f"r{i}" for i in range(150)}
    published = await records_in(settings, topic)
    assert sorted(published) == sorted(it[1].id for it in won)


async def test_kafka_down_releases_every_claim(store: DocumentStore, settings: Settings) -> None:
    dead = settings.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_publish_timeout=1)
    bus = Bus(dead)  # never started: publishing fails at once
    intake = Intake(store, bus, "nowhere", "nowhere.lifecycle")
    items = [item(f"d{i}") for i in range(20)]
    results = await asyncio.gather(*(intake.submit(*it) for it in items), return_exceptions=True)
    assert all(isinstance(r, BusUnavailable) for r in results), results
    for it in items:
        assert await store.get("acme", "nfse", it[0].ref) is None
    # The refs are free again: a retry once Kafka is back can claim them.
    again = await store.claim_many([item("d0")[0]])
    assert isinstance(again[0], Claim)


async def errored(store: DocumentStore, ref: str) -> Claim:
    """A note whose attempt ended in erro_autorizacao, recorded by its consumer, which died
    before its lifecycle event went out: the state is written, the event is not."""
    (first,) = await store.claim_many([item(ref)[0]])
    assert isinstance(first, Claim)
    erros = [{"codigo": "E160", "mensagem": "Inscrição municipal inválida", "correcao": None}]
    assert await store.transition(first.document_id, 1, ERROR, "test", erros=erros) is not None
    return first


async def test_a_re_emission_publishes_the_errors_event_before_its_command(
    store: DocumentStore, settings: Settings
) -> None:
    """The redelivered callback that would have sent the error finds the note at its second
    attempt and may not publish an older status: the ingress, which moved it on, sends it."""
    commands, lifecycle = (settings.kafka_topic_prefix + name for name in ("cmds", "lifecycle"))
    await ensure_topics(settings, [commands, lifecycle])
    first = await errored(store, "e1")
    fresh = item("n1")  # a new ref beside it: nothing of the kind is published for it
    again = item("e1")
    bus = Bus(settings)
    await bus.start()
    await bus.wait_connected(10)
    intake = Intake(store, bus, commands, lifecycle)
    try:
        new, second = await asyncio.gather(intake.submit(*fresh), intake.submit(*again))
    finally:
        await bus.stop()
    assert (new.attempt, second.attempt) == (1, 2)
    assert second.replaced is not None and second.replaced.attempt == 1

    (event,) = await events_in(settings, lifecycle)
    assert event.id == f"nfse-{first.document_id}-1-{ERROR}"  # the id its consumer would use
    assert event.status == ERROR and event.subject == "e1" and event.tenant == "acme"
    assert event.data == {
        "tenant": "acme",
        "kind": "nfse",
        "id": first.document_id,
        "cnpj_prestador": "51916585000125",
        "ref": "e1",
        "status": ERROR,
        "erros": [{"codigo": "E160", "mensagem": "Inscrição municipal inválida", "correcao": None}],
    }
    assert sorted(await records_in(settings, commands)) == sorted([fresh[1].id, again[1].id])
    doc = await store.get("acme", "nfse", "e1")
    assert doc is not None and (doc.status, doc.attempt) == (PROCESSING, 2)


async def test_a_re_emission_kafka_refuses_leaves_the_error_as_it_was(
    store: DocumentStore, settings: Settings
) -> None:
    """Its error's event could not go out: the command is not sent, the claim is released, and
    the client's retry finds the note in erro_autorizacao again."""
    await errored(store, "e2")
    dead = settings.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}", kafka_publish_timeout=1)
    intake = Intake(store, Bus(dead), "nowhere", "nowhere.lifecycle")
    with pytest.raises(BusUnavailable):
        await intake.submit(*item("e2"))
    doc = await store.get("acme", "nfse", "e2")
    assert doc is not None and (doc.status, doc.attempt) == (ERROR, 1)
