"""The ingress's group commit (claim + publish for many requests at once) on both databases
and the real broker: one winner per ref, every winner's command in Kafka, and nothing left
claimed when Kafka does not acknowledge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from notaflow.bus import Bus, ensure_topics
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, RefInUse
from notaflow.ingress.intake import Intake
from notaflow.launch.broker import free_port
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
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        ids: list[str] = []
        while any([await consumer.position(tp) < ends[tp] for tp in parts]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += [dict(r.headers)["ce_id"].decode() for r in records]
        return ids
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
    intake = Intake(store, bus, topic, max_batch=max_batch)
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
    intake = Intake(store, bus, "nowhere")
    items = [item(f"d{i}") for i in range(20)]
    results = await asyncio.gather(*(intake.submit(*it) for it in items), return_exceptions=True)
    assert all(isinstance(r, BusUnavailable) for r in results), results
    for it in items:
        assert await store.get("acme", "nfse", it[0].ref) is None
    # The refs are free again: a retry once Kafka is back can claim them.
    again = await store.claim_many([item("d0")[0]])
    assert isinstance(again[0], Claim)
