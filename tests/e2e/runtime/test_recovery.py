"""Recovery tools against the real processes: the reconciler completes a note whose provider
callback was lost; a record set aside in the dead-letter topic is listed and replayed after
the fault behind it is fixed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.settings import Settings
from testkit.erp_documents import ERP_NFSEN
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack
from testkit.waiting import wait_for


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(settings, tmp_path).start()
    yield s
    s.stop()


def test_reconciler_completes_a_note_whose_callback_was_lost(stack: Stack) -> None:
    doc = with_valid_cnpjs(JSON_EXAMPLE)
    doc["servico"]["discriminacao"] = "Serviço [sandbox:sem_callback]"
    nacional = {**ERP_NFSEN, "descricao_servico": "Serviço [sandbox:sem_callback]"}
    with stack.client() as c:
        assert c.post("/v2/nfse", params={"ref": "lost1"}, json=doc).status_code == 202
        assert c.post("/v2/nfsen", params={"ref": "lostn"}, json=nacional).status_code == 202
    # Focus got them and authorized them, but told nobody.
    wait_for(
        lambda: len(stack.focus_stats()["authorizations"]) == 2,
        20,
    )
    time.sleep(0.5)
    with stack.client() as c:
        assert c.get("/v2/nfse/lost1").json()["status"] == "processando_autorizacao"
        assert c.get("/v2/nfsen/lostn").json()["status"] == "processando_autorizacao"
    out = stack.run("reconcile", "--older-than", "0")
    report = json.loads(out.splitlines()[-1])
    assert report["completed"] == 2 and report["failed"] == [], out
    note = stack.wait_status("lost1", {"autorizado"})
    assert note["numero"] and note["caminho_xml_nota_fiscal"]
    with stack.client() as c:  # the NFS-e Nacional is asked at its own Focus path
        national = wait_for(
            lambda: (n := c.get("/v2/nfsen/lostn").json())["status"] == "autorizado" and n, 20
        )
    assert len(national["codigo_verificacao"]) == 50
    # Running it again (or from another replica) changes nothing.
    again = json.loads(stack.run("reconcile", "--older-than", "0").splitlines()[-1])
    assert again["examined"] == 0


def test_dead_letter_listed_then_replayed_after_the_fix(stack: Stack) -> None:
    topics = t.Topics(stack.settings.kafka_topic_prefix)
    event = Event(
        type=t.NFSE_EMIT,
        source="erp-x",
        data={"tenant": "later", "ref": "dl1", "nfse": with_valid_cnpjs(JSON_EXAMPLE)},
        subject="dl1",
    )

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.nfse_commands,
                event.value(),
                key=t.document_key("later", "nfse", "dl1"),
                headers=event.headers(),
            )
        finally:
            await producer.stop()

    asyncio.run(publish())

    def listed() -> list[dict[str, str]]:
        out = stack.run("dlq", "list", "--error", "tenant desconhecido")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    [letter] = wait_for(listed, 20, 0.5)
    assert letter["origin"].startswith(topics.nfse_commands)
    assert letter["type"] == t.NFSE_EMIT
    dry = stack.run("dlq", "replay", "--id", letter["id"], "--dry-run")
    assert "would_replay" in dry
    # The fix: the tenant the ERP publishes for now exists.
    later_token = stack.run("tenant", "create", "later", "--cnpj", "51916585000125")
    stack.run("dlq", "replay", "--id", letter["id"])
    with httpx.Client(base_url=stack.base, auth=(later_token.splitlines()[-1], "")) as c:
        wait_for(lambda: c.get("/v2/nfse/dl1").json().get("status") == "autorizado", 20)
