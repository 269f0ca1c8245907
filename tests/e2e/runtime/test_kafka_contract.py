"""The Kafka side of the contract: commands published straight to the command topic by other
systems, lifecycle events out, dead letters for what cannot be processed, provider webhooks."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.settings import Settings
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(settings, tmp_path).start()
    yield s
    s.stop()


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, want: int, timeout: float = 20) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"test-{uuid.uuid4().hex[:6]}",
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < want:
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    got.extend(records)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return got


def emit_record(tenant: str, ref: str, doc: Any) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    event = Event(
        type=t.NFSE_EMIT,
        source="erp-x",
        data={"tenant": tenant, "ref": ref, "nfse": doc},
        subject=ref,
    )
    return t.document_key(tenant, "nfse", ref), event.value(), event.headers()


def test_commands_straight_from_kafka_and_dead_letters(stack: Stack) -> None:
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    bad_doc = with_valid_cnpjs(JSON_EXAMPLE)
    bad_doc["prestador"]["codigo_municipio"] = "35503080"  # 8 digits
    records = [
        (
            b"garbage",
            b"{not json",
            [("ce_id", b"1"), ("ce_type", t.NFSE_EMIT.encode()), ("ce_source", b"x")],
        ),
        emit_record("acme", "kbad", bad_doc),
        emit_record("acme", "kgood", with_valid_cnpjs(JSON_EXAMPLE)),
    ]
    asyncio.run(produce(stack.settings.kafka_bootstrap, topics.nfse_commands, records))
    note = stack.wait_status("kgood", {"autorizado"})
    assert note["numero"]
    dead = asyncio.run(consume_all(stack.settings.kafka_bootstrap, topics.dead_letter, 2))
    assert len(dead) == 2, stack.logs()
    reasons = [dict(r.headers) for r in dead]
    assert all(h["dlq_origin_topic"] == topics.nfse_commands.encode() for h in reasons)
    assert any(b"not JSON" in h["dlq_error"] for h in reasons)
    assert any(b"prestador.codigo_municipio" in h["dlq_error"] for h in reasons)
    with stack.client() as c:
        assert c.get("/v2/nfse/kbad").status_code == 404
    lifecycle = asyncio.run(consume_all(stack.settings.kafka_bootstrap, topics.lifecycle, 2))
    statuses = [
        json.loads(r.value)["status"] for r in lifecycle if json.loads(r.value)["ref"] == "kgood"
    ]
    assert statuses == ["processando_autorizacao", "autorizado"]
    assert dict(lifecycle[-1].headers)["ce_type"] == t.NFSE_STATUS.encode()


def test_provider_webhook_auth_and_duplicates(stack: Stack) -> None:
    with stack.client() as c:
        assert (
            c.post(
                "/v2/nfse", params={"ref": "wh1"}, json=with_valid_cnpjs(JSON_EXAMPLE)
            ).status_code
            == 202
        )
    note = stack.wait_status("wh1", {"autorizado"})
    hook = f"{stack.base}/webhooks/focus/nfse"
    provider_ref = "N1A1"
    forged = {"ref": provider_ref, "status": "erro_autorizacao", "erros": [{"codigo": "X"}]}
    assert httpx.post(hook, json=forged, headers={"Authorization": "wrong"}).status_code == 401
    assert httpx.post(hook, json=forged).status_code == 401
    secret = {"Authorization": stack.settings.focus_webhook_secret}
    assert httpx.post(hook, content=b"[1,2", headers=secret).status_code == 400
    assert httpx.post(hook, json={"status": "autorizado"}, headers=secret).status_code == 400
    # Replaying the sandbox's real callback twice changes nothing.
    real = httpx.get(f"{stack.sandbox}/v2/nfse/{provider_ref}", auth=("sandbox-token", "")).json()
    for _ in range(2):
        assert httpx.post(hook, json=real, headers=secret).status_code == 200
    # Give the consumer time to see both replays, then nothing may have moved.
    asyncio.run(asyncio.sleep(2))
    with stack.client() as c:
        assert c.get("/v2/nfse/wh1").json() == note
    out = stack.run("history", "acme", "wh1")
    assert [h["status"] for h in json.loads(out)["history"]] == [
        "processando_autorizacao",
        "autorizado",
    ]


def test_redelivered_command_emits_once(stack: Stack) -> None:
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    with stack.client() as c:
        assert (
            c.post(
                "/v2/nfse", params={"ref": "dup1"}, json=with_valid_cnpjs(JSON_EXAMPLE)
            ).status_code
            == 202
        )
    stack.wait_status("dup1", {"autorizado"})
    # A redelivery: the very record the ingress published, read back and published again.
    records = asyncio.run(consume_all(stack.settings.kafka_bootstrap, topics.nfse_commands, 1))
    asyncio.run(
        produce(
            stack.settings.kafka_bootstrap,
            topics.nfse_commands,
            [(r.key, r.value, list(r.headers)) for r in records] * 2,
        )
    )
    asyncio.run(asyncio.sleep(2))
    stats = stack.focus_stats()
    assert stats["emissions"] == {"N1A1": 1}, stats
