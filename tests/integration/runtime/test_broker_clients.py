"""Which Kafka clients work against the embedded broker (Tansu), as the README says: aiokafka
(ours) and librdkafka 2.x (through confluent-kafka, the client most non-Python tools share)
each produce and consume a record with headers and see the other's. (Debian's kcat is built
on an older librdkafka that does not complete the ApiVersions handshake with it.)"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from notaflow.launch.broker import EmbeddedBroker

confluent_kafka = pytest.importorskip("confluent_kafka")
from confluent_kafka import (  # noqa: E402
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402


def _librdkafka_produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    # Tansu refuses InitProducerId: no idempotence (the default of librdkafka, said anyway).
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False}
    )
    errors: list[KafkaError] = []
    producer.produce(
        topic,
        value,
        key,
        headers=[("ce_type", b"test.librdkafka")],
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    assert producer.flush(20) == 0, "not delivered within 20 s"
    assert errors == []


def _librdkafka_consume(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"librdkafka-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    # Assigned partitions (no group join, which costs seconds), offsets committed to the group.
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    got: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(200):
            msg = consumer.poll(0.1)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            key, value = msg.key(), msg.value()
            assert key is not None and value is not None
            got.append((key, value))
            if len(got) == count:
                consumer.commit(asynchronous=False)
                break
    finally:
        consumer.close()
    return got


async def _aiokafka_produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, headers=[("ce_type", b"test.aio")])
    finally:
        await producer.stop()


async def _aiokafka_consume(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"aiokafka-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[bytes, bytes]] = []
    try:
        async with asyncio.timeout(30):
            async for record in consumer:
                assert record.key is not None and record.value is not None
                got.append((record.key, record.value))
                if len(got) == count:
                    break
    finally:
        await consumer.stop()
    return got


@pytest.mark.slow
def test_librdkafka_2_and_aiokafka_produce_and_consume(broker: EmbeddedBroker) -> None:
    major = int(confluent_kafka.libversion()[0].split(".")[0])
    assert major >= 2, confluent_kafka.libversion()
    topic = f"clients-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, num_partitions=3)]).values():
        future.result(20)
    _librdkafka_produce(broker.bootstrap, topic, b"k1", b"from librdkafka")
    asyncio.run(_aiokafka_produce(broker.bootstrap, topic, b"k2", b"from aiokafka"))
    expected = {(b"k1", b"from librdkafka"), (b"k2", b"from aiokafka")}
    assert set(_librdkafka_consume(broker.bootstrap, topic, 2)) == expected
    assert set(asyncio.run(_aiokafka_consume(broker.bootstrap, topic, 2))) == expected
