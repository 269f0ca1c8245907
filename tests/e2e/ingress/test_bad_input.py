"""Bad input at the ingress: a clear Focus-style error, never a 500, and nothing published."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from notaflow.launch.broker import EmbeddedBroker, free_port
from notaflow.settings import Settings
from notaflow.topics import Topics
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack
from testkit.waiting import wait_for, wait_http


@pytest.fixture(scope="module")
def stack(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("bad")
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=f"sqlite:///{tmp / 'nf.db'}",
        max_body_bytes=64_000,
    )
    s = Stack(settings, tmp).start()
    yield s
    s.stop()


async def _records_in(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not parts:
            await consumer._client.force_metadata_update()
            parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        ends = await consumer.end_offsets(parts)
        return sum(ends.values())
    finally:
        await consumer.stop()


def records_in(stack: Stack) -> int:
    topic = Topics(stack.settings.kafka_topic_prefix).nfse_commands
    return asyncio.run(_records_in(stack.settings.kafka_bootstrap, topic))


def doc_with(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(with_valid_cnpjs(JSON_EXAMPLE))
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


CASES = [
    (
        "missing municipality",
        doc_with("prestador.codigo_municipio", KeyError),
        400,
        'Parâmetro "prestador.codigo_municipio" não informado',
    ),
    (
        "8-digit municipality",
        doc_with("prestador.codigo_municipio", "35162000"),
        400,
        "prestador.codigo_municipio",
    ),
    (
        "bad IBGE check digit",
        doc_with("servico.codigo_municipio", "3516201"),
        400,
        "servico.codigo_municipio",
    ),
    ("natureza 9", doc_with("natureza_operacao", "9"), 400, "natureza_operacao"),
    ("CNPJ check digit", doc_with("prestador.cnpj", "51916585000126"), 400, "prestador.cnpj"),
    (
        "tomador CPF check digit",
        {
            **doc_with("tomador.cnpj", KeyError),
            "tomador": {"cpf": "02558352483", "razao_social": "Fulano"},
        },
        400,
        "tomador.cpf",
    ),
    ("wrong type", doc_with("servico.valor_servicos", {"x": 1}), 400, "servico.valor_servicos"),
    ("boolean as word", doc_with("servico.iss_retido", "talvez"), 400, "servico.iss_retido"),
    ("array body", [1, 2], 400, None),
]


@pytest.mark.parametrize(("name", "body", "status", "mentions"), CASES, ids=[c[0] for c in CASES])
def test_invalid_documents(
    stack: Stack, name: str, body: Any, status: int, mentions: str | None
) -> None:
    before = records_in(stack)
    with stack.client() as c:
        r = c.post("/v2/nfse", params={"ref": "bad" + uuid.uuid4().hex[:6]}, json=body)
    assert r.status_code == status, r.text
    assert r.json()["codigo"] == "requisicao_invalida"
    if mentions:
        assert mentions in r.json()["mensagem"]
    assert records_in(stack) == before


def test_request_level_errors(stack: Stack) -> None:
    good = json.dumps(with_valid_cnpjs(JSON_EXAMPLE)).encode()
    before = records_in(stack)
    with stack.client() as c:

        def post(params: dict[str, str], content: bytes, **kw: Any) -> httpx.Response:
            return c.post("/v2/nfse", params=params, content=content, **kw)

        r = post({}, good)
        assert (r.status_code, r.json()["mensagem"]) == (400, 'Parâmetro "ref" não informado')
        assert post({"ref": "a-b"}, good).status_code == 400
        assert post({"ref": "x" * 51}, good).status_code == 400
        assert post({"ref": "nj"}, b"<nfse/>").json()["codigo"] == "requisicao_invalida"
        r = post({"ref": "xml"}, b"<nfse/>", headers={"content-type": "application/xml"})
        assert r.status_code == 415
        r = post({"ref": "big"}, b'{"a":"' + b"x" * 70_000 + b'"}')
        assert r.status_code == 413 and r.json()["codigo"] == "requisicao_invalida"
        assert post({"ref": "empty"}, b"").status_code == 400
        assert post({"ref": "latin"}, '{"é": 1}'.encode("latin-1")).status_code == 400
    assert records_in(stack) == before


def test_auth_errors_do_not_reveal_tenants(stack: Stack) -> None:
    good = with_valid_cnpjs(JSON_EXAMPLE)
    url = f"{stack.base}/v2/nfse"
    none = httpx.post(url, params={"ref": "a1"}, json=good)
    assert none.status_code == 401 and none.json()["codigo"] == "nao_autorizado"
    wrong = httpx.post(url, params={"ref": "a1"}, json=good, auth=("nope", ""))
    garbled = httpx.post(
        url, params={"ref": "a1"}, json=good, headers={"Authorization": "Basic !!"}
    )
    assert wrong.status_code == 403 and wrong.json()["codigo"] == "permissao_negada"
    assert garbled.status_code == 401
    # Another tenant's note is simply not found.
    other = stack.run("tenant", "create", "other", "--cnpj", "22769530000131").splitlines()[-1]
    with stack.client() as c:
        assert c.post("/v2/nfse", params={"ref": "mine"}, json=good).status_code == 202
    r = httpx.get(f"{stack.base}/v2/nfse/mine", auth=(other, ""))
    assert r.status_code == 404 and r.json()["codigo"] == "nao_encontrado"
    assert httpx.get(f"{stack.base}/v2/nada", auth=(other, "")).status_code == 404


def test_broker_down_answers_503_and_not_ready(tmp_path: Any) -> None:
    broker = EmbeddedBroker(free_port(), log_file=tmp_path / "broker.log")
    broker.start()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_partitions=2,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        kafka_publish_timeout=2.0,
        database_url=f"sqlite:///{tmp_path / 'nf.db'}",
    )
    s = Stack(settings, tmp_path).start()
    try:
        with s.client() as c:
            assert (
                c.post(
                    "/v2/nfse", params={"ref": "up"}, json=with_valid_cnpjs(JSON_EXAMPLE)
                ).status_code
                == 202
            )
            broker.stop()
            r = c.post("/v2/nfse", params={"ref": "down"}, json=with_valid_cnpjs(JSON_EXAMPLE))
            assert r.status_code == 503, r.text
            assert r.json()["codigo"] == "servico_indisponivel"
            assert c.get("/v2/nfse/down").status_code == 404  # nothing half-accepted
            wait_for(lambda: httpx.get(f"{s.base}/readyz").status_code == 503, 10)
            assert httpx.get(f"{s.base}/healthz").status_code == 200
            # The broker comes back (memory storage: empty); topics are recreated, ready again.
            broker.start()
            s.run("migrate")
            wait_http(f"{s.base}/readyz", timeout=30)
            r = c.post("/v2/nfse", params={"ref": "down"}, json=with_valid_cnpjs(JSON_EXAMPLE))
            assert r.status_code == 202, r.text
    finally:
        s.stop()
        broker.stop()
