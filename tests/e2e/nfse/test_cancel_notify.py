"""Cancellation, e-mail and client webhooks through the real processes: the emission,
cancellation and notification consumers, the Focus sandbox, a real SMTP server (the project's
aiosmtpd sink) that counts what it receives, and a real HTTP receiver for hooks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from standardwebhooks import Webhook

from notaflow.launch.broker import EmbeddedBroker
from notaflow.settings import Settings
from notaflow.topics import Topics
from testkit.receiver import Receiver, ReceiverServer
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack
from testkit.waiting import wait_for


class World:
    def __init__(self, stack: Stack, sink: ThreadedSmtpSink, receiver: Receiver) -> None:
        self.stack, self.sink, self.receiver = stack, sink, receiver

    def client(self) -> httpx.Client:
        return self.stack.client()

    def emit(self, ref: str, discriminacao: str = "Serviço", email: str | None = None) -> None:
        doc = copy.deepcopy(with_valid_cnpjs(JSON_EXAMPLE))
        doc["servico"]["discriminacao"] = discriminacao
        doc["tomador"]["email"] = email or f"{ref}@cliente.example"
        with self.client() as c:
            r = c.post("/v2/nfse", params={"ref": ref}, json=doc)
        assert r.status_code == 202, r.text

    def mails_to(self, address: str) -> list[Any]:
        return [m for m in self.sink.received() if address in m.rcpt_tos]


@pytest.fixture(scope="module")
def world(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("notify")
    sink = ThreadedSmtpSink(tmp / "outbox").start()
    receiver_server = ReceiverServer()
    receiver = receiver_server.start()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"n{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=f"sqlite:///{tmp / 'nf.db'}",
        consumer_retry_base=0.2,
        consumer_retry_max=1.0,
        consumer_max_attempts=30,
        cancel_wait=3.0,
        **sink.settings(),
        smtp_sender="nfse@notaflow.test",
        smtp_pause=0.05,
        hooks_allow_private=True,
        hooks_retry_schedule="0.3,0.6,1",
    )
    stack = Stack(settings, tmp, consumers=("emission", "cancellation", "notification")).start()
    yield World(stack, sink, receiver)
    stack.stop()
    receiver_server.stop()
    sink.stop()


# -- cancellation -----------------------------------------------------------------------------

JUST = {"justificativa": "Cliente desistiu do serviço contratado"}


def test_cancel_outcomes(world: World) -> None:
    world.emit("can1")
    world.emit("can2", "Serviço [sandbox:nao_cancela]")
    world.emit("can3", "Serviço [sandbox:erro]")
    world.stack.wait_status("can1", {"autorizado"})
    world.stack.wait_status("can2", {"autorizado"})
    world.stack.wait_status("can3", {"erro_autorizacao"})
    with world.client() as c:
        assert c.request("DELETE", "/v2/nfse/can1", json={"justificativa": "curta"}).json() == {
            "codigo": "requisicao_invalida",
            "mensagem": 'Parâmetro "justificativa" deve ter entre 15 e 255 caracteres',
        }
        r = c.request("DELETE", "/v2/nfse/can1", json=JUST)
        assert (r.status_code, r.json()) == (200, {"status": "cancelado"})
        again = c.request("DELETE", "/v2/nfse/can1", json=JUST)
        assert (again.status_code, again.json()["codigo"]) == (400, "nfe_cancelada")
        refused = c.request("DELETE", "/v2/nfse/can2", json=JUST).json()
        assert refused["status"] == "erro_cancelamento"
        assert [e["codigo"] for e in refused["erros"]] == ["E523"]
        assert c.get("/v2/nfse/can2").json()["status"] == "autorizado"
        r = c.request("DELETE", "/v2/nfse/can3", json=JUST)
        assert (r.status_code, r.json()["codigo"]) == (400, "nfe_nao_autorizada")
        r = c.request("DELETE", "/v2/nfse/nada", json=JUST)
        assert (r.status_code, r.json()["codigo"]) == (404, "nao_encontrado")
        assert c.get("/v2/nfse/can1").json()["status"] == "cancelado"
    # Focus e-mails the tomador when the note is authorized and when it is cancelled.
    wait_for(lambda: len(world.mails_to("can1@cliente.example")) == 2, 10)
    subjects = [str(m.message["Subject"]) for m in world.mails_to("can1@cliente.example")]
    assert any("autorizada" in s for s in subjects) and any("cancelada" in s for s in subjects)


def test_cancel_racing_the_emission_is_ordered(world: World) -> None:
    world.emit("race1", "Serviço [sandbox:delay=1]")
    with world.client() as c:
        r = c.request("DELETE", "/v2/nfse/race1", json=JUST)
    assert (r.status_code, r.json()) == (200, {"status": "cancelado"})


def test_cancel_past_the_bound_answers_202_then_completes(world: World) -> None:
    world.emit("slow1", "Serviço [sandbox:delay=5]")
    with world.client() as c:
        started = time.monotonic()
        r = c.request("DELETE", "/v2/nfse/slow1", json=JUST)
        assert time.monotonic() - started < 6
        assert (r.status_code, r.json()["status"]) == (202, "processando_autorizacao")
    assert world.stack.wait_status("slow1", {"cancelado"}, timeout=20)["status"] == "cancelado"


def test_many_concurrent_cancellations(world: World) -> None:
    refs = [f"mc{i}" for i in range(60)]
    for ref in refs:
        world.emit(ref)
    for ref in refs:
        world.stack.wait_status(ref, {"autorizado"})

    def cancel(ref: str) -> int:
        with world.client() as c:
            return c.request("DELETE", f"/v2/nfse/{ref}", json=JUST).status_code

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(60) as pool:
        codes = list(pool.map(cancel, refs))
    elapsed = time.monotonic() - started
    assert codes == [200] * len(refs), codes
    assert elapsed < 10, elapsed


def test_a_cancellation_through_notaflow_costs_two_credits(world: World) -> None:
    """What a cancellation through notaflow costs at Focus: the DELETE, whose answer is the
    status alone (seed 001), and one GET that names the cancellation XML, which is then
    downloaded without credentials. The `cancelado` callback Focus sends meanwhile finds the
    note cancelled and costs nothing. With the POST: three credits a cancelled note."""
    refs = [f"cc{i}" for i in range(8)]

    before = world.stack.focus_stats()
    for ref in refs:
        world.emit(ref)
    for ref in refs:
        world.stack.wait_status(ref, {"autorizado"})
    with world.client() as c:
        for ref in refs:
            r = c.request("DELETE", f"/v2/nfse/{ref}", json=JUST)
            assert (r.status_code, r.json()) == (200, {"status": "cancelado"})
    sent = before["callbacks"]["sent"] + 2 * len(refs)
    wait_for(lambda: world.stack.focus_stats()["callbacks"]["sent"] >= sent, 10)
    time.sleep(2)  # the cancelado callbacks through the ingress, Kafka and the emission consumer
    after = world.stack.focus_stats()
    asked = sum(after["consultas"].values()) - sum(before["consultas"].values())
    spent = after["credits"]["sandbox-token"] - before["credits"].get("sandbox-token", 0)
    assert (asked, spent) == (len(refs), 3 * len(refs))
    assert sum(after["downloads"].values()) - sum(before["downloads"].values()) == 2 * len(refs)


# -- e-mail -----------------------------------------------------------------------------------


def test_email_copies_ten_ok_eleven_refused(world: World) -> None:
    world.emit("mail1")
    world.stack.wait_status("mail1", {"autorizado"})
    ten = [f"copia{i}@empresa.example" for i in range(10)]
    with world.client() as c:
        eleven = c.post("/v2/nfse/mail1/email", json={"emails": [*ten, "x@empresa.example"]})
        assert eleven.status_code == 400 and "10" in eleven.json()["mensagem"]
        bad = c.post("/v2/nfse/mail1/email", json={"emails": ["não é e-mail"]})
        assert bad.status_code == 400 and bad.json()["codigo"] == "requisicao_invalida"
        r = c.post("/v2/nfse/mail1/email", json={"emails": ten})
        assert r.status_code == 200, r.text
    wait_for(lambda: all(world.mails_to(a) for a in ten), 15)
    message = world.mails_to(ten[0])[0].message
    assert "Cópia da NFS-e" in str(message["Subject"])
    assert message["Message-ID"] and message["Date"]
    body = message.get_body(("plain",)).get_content()
    assert "R$ 1,00" in body and "/notas_fiscais_servico/" in body


def test_redelivered_email_command_sends_nothing_twice(world: World) -> None:
    world.emit("mail2")
    world.stack.wait_status("mail2", {"autorizado"})
    with world.client() as c:
        assert c.post("/v2/nfse/mail2/email", json={"emails": ["dup@x.example"]}).status_code == 200
    wait_for(lambda: world.mails_to("dup@x.example"), 10)
    topic = Topics(world.stack.settings.kafka_topic_prefix).nfse_commands
    records = asyncio.run(_records(world.stack.settings.kafka_bootstrap, topic))
    email_records = [r for r in records if dict(r.headers)["ce_type"] == b"br.notaflow.nfse.email"]
    mine = [r for r in email_records if json.loads(r.value)["ref"] == "mail2"]
    asyncio.run(_produce(world.stack.settings.kafka_bootstrap, topic, mine * 2))
    time.sleep(2)
    assert len(world.mails_to("dup@x.example")) == 1


async def _records(bootstrap: str, topic: str) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                out += batch
        return out
    finally:
        await consumer.stop()


async def _produce(bootstrap: str, topic: str, records: list[Any]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for r in records:
            await producer.send_and_wait(topic, r.value, key=r.key, headers=list(r.headers))
    finally:
        await producer.stop()


def test_hubsoft_partial_success(world: World) -> None:
    world.emit("hub1", email="registrado@cliente.example")
    note = world.stack.wait_status("hub1", {"autorizado"})
    world.sink.call(lambda: world.sink.sink.refuse(r"recusado@"))
    url = f"{world.stack.base}/api/v1/integracao/cliente/nota_fiscal/enviar_email"
    auth = {"Authorization": f"Bearer {world.stack.token}"}
    body = {
        "id_nota_fiscal": str(note["id"]),
        "tipo_documento": "nfse",
        "email_adicional": ["extra@cliente.example", "recusado@cliente.example"],
    }
    r = httpx.post(url, json=body, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["status"] == "success"
    assert answer["msg"] == "Um total de 2/3 email(s) foram enviados com sucesso"
    by_address = {e["email_destino"]: e for e in answer["emails_enviados"]}
    assert by_address["registrado@cliente.example"]["enviado"] is True
    assert by_address["recusado@cliente.example"]["enviado"] is False
    assert "550" in by_address["recusado@cliente.example"]["mensagem_erro"]
    entry = by_address["extra@cliente.example"]
    for field in (
        "host",
        "email_origem",
        "data_envio",
        "data_envio_br",
        "data_envio_timestamp",
        "id_email_enviado",
        "tipo_envio",
        "mensagem_erro",
    ):
        assert field in entry
    assert len(entry["data_envio_br"]) == 16 and entry["data_envio_timestamp"] > 10**12
    errors = [
        httpx.post(url, json={**body, "tipo_documento": "nfe"}, headers=auth).json(),
        httpx.post(url, json={**body, "id_nota_fiscal": "999999"}, headers=auth).json(),
        httpx.post(url, json={"tipo_documento": "nfse"}, headers=auth).json(),
        httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}).json(),
    ]
    assert all(e["status"] == "error" and e["msg"] for e in errors), errors


# -- client webhooks ------------------------------------------------------------------------


def test_hooks_crud_and_delivery_with_retries_and_signature(world: World) -> None:
    world.receiver.reset()
    with world.client() as c:
        bad = c.post("/v2/hooks", json={"event": "nada", "url": world.receiver.url()})
        assert bad.json()["mensagem"] == 'Parâmetro "event" deve ser um evento válido.'
        assert (
            "URL inválida"
            in c.post("/v2/hooks", json={"event": "nfse", "url": "ftp://x"}).json()["mensagem"]
        )
        not_text = c.post("/v2/hooks", json={"event": "nfse", "url": 5}).json()
        assert not_text["mensagem"] == "URL inválida: 5"
        hook = c.post(
            "/v2/hooks",
            json={
                "cnpj": "51916585000125",
                "event": "nfse",
                "url": world.receiver.url("/focus"),
                "authorization": "segredo-do-cliente",
                "authorization_header": "X-Focus-Auth",
            },
        ).json()
        assert hook["id"] and hook["event"] == "nfse"
        assert c.get(f"/v2/hooks/{hook['id']}").json()["url"] == world.receiver.url("/focus")
        extra = [
            c.post(
                "/v2/hooks",
                json={
                    "cnpj": "51916585000125",
                    "event": "nfse",
                    "url": world.receiver.url(f"/x{i}"),
                },
            )
            for i in range(5)
        ]
        assert [r.status_code for r in extra] == [200, 200, 200, 200, 400]
        for r in extra[:4]:
            deleted = c.request("DELETE", f"/v2/hooks/{r.json()['id']}").json()
            assert deleted["deleted"] is True
        assert [h["id"] for h in c.get("/v2/hooks").json()] == [hook["id"]]
    world.receiver.fail(2, status=500)
    world.emit("hook1")
    world.stack.wait_status("hook1", {"autorizado"})

    def authorized_posts() -> list[Any]:
        return [
            s for s in world.receiver.seen
            if s.path == "/focus" and json.loads(s.body).get("status") == "autorizado"
        ]  # fmt: skip

    wait_for(lambda: len(authorized_posts()) >= 3, 15)
    posts = authorized_posts()
    assert len({p.headers["webhook-id"] for p in posts}) == 1  # one delivery, three attempts
    last = posts[-1]
    assert last.headers["x-focus-auth"] == "segredo-do-cliente"
    Webhook(hook["signing_secret"]).verify(last.body, last.headers)
    assert json.loads(last.body)["ref"] == "hook1"
    # Re-fire: the note's current state goes to its hooks again.
    with world.client() as c:
        fired = c.post("/v2/nfse/hook1/hook")
        assert [h["id"] for h in fired.json()] == [hook["id"]]
    wait_for(lambda: len(authorized_posts()) >= 4, 10)
