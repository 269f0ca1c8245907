"""Hostile input (issue 6, proof 6): schemathesis drives every operation of the OpenAPI
description the ingress itself serves (`GET /openapi.json`), over real HTTP, against the
production processes (`testkit.stack.Stack`: ingress, emission and billing consumers, Focus
sandbox, embedded broker, SQLite).

Each operation gets schema-conforming (positive) and schema-breaking (negative) requests, sent
with the dialect's valid credentials, with none, or with wrong ones, sometimes aimed at a note,
an invoice and a hook that exist. For every request:

- no 5xx (the broker is up, so not even 503), and an answer within `TIME_BOUND` (no hang);
- a 4xx is in its dialect's error shape: Focus `{codigo, mensagem}`, HubSoft
  `{status: "error", msg}`, Wuro `{error: {code, message}}`;
- the records that appeared on the command topics (NFS-e/NFC-e commands, provider events,
  billing events and commands) are exactly what the answer promises: one command for an
  accepted one (202 on POST /v2/nfse, a hook or e-mail answered 200, ...), one per event on
  POST /faturas/eventos, and none for a refused request. End offsets are read before and after
  each request; only the ingress writes these topics here.

Deterministic (`derandomize`, no example database). `NOTAFLOW_FUZZ_EXAMPLES` sets the examples
per operation and mode (default 10, about a minute); e.g. `NOTAFLOW_FUZZ_EXAMPLES=200
bin/test tests/faults/ingress/test_hostile_input.py` for a long run.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET

from notaflow import billing as b
from notaflow.ingress.openapi import openapi_document
from notaflow.launch.broker import EmbeddedBroker
from notaflow.settings import Settings
from notaflow.topics import Topics
from testkit.postgres import ThrowawayPostgres
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack
from testkit.waiting import wait_for

EXAMPLES = int(os.environ.get("NOTAFLOW_FUZZ_EXAMPLES", "10"))
# Both databases by default (PostgreSQL refuses what SQLite stores, e.g. NUL in text);
# NOTAFLOW_FUZZ_DATABASE=sqlite or =postgres runs one.
DATABASES = (
    [os.environ["NOTAFLOW_FUZZ_DATABASE"]]
    if os.environ.get("NOTAFLOW_FUZZ_DATABASE")
    else [
        "sqlite",
        "postgres",
    ]
)
TIME_BOUND = 5.0  # seconds; the stack's synchronous waits are set to 1 s below

SEED_REF = "fuzzseed1"
SEED_UID = "FUZZ1"

PROTECTED = {
    op["operationId"]
    for item in openapi_document()["paths"].values()
    for method, op in item.items()
    if method != "parameters" and op.get("security", [{}]) != []
}
OPERATIONS = [
    (method.upper(), path, op["operationId"])
    for path, item in openapi_document()["paths"].items()
    for method, op in item.items()
    if method != "parameters"
]


def _dialect(path: str) -> str:
    if path.startswith("/api/v1/"):
        return "hubsoft"
    if path.startswith("/api/v3.2/"):
        return "wuro"
    return "focus"


class Offsets:
    """End offsets of the command topics, read by one aiokafka consumer on its own loop."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.topics = topics
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.consumer: AIOKafkaConsumer | None = None
        self.parts: list[TopicPartition] = []
        self.bootstrap = bootstrap

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> Offsets:
        self.thread.start()

        async def start() -> None:
            self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
            await self.consumer.start()
            await self.consumer._client.force_metadata_update()
            for topic in self.topics:
                partitions = self.consumer.partitions_for_topic(topic)
                assert partitions, f"topic {topic} does not exist"
                self.parts.extend(TopicPartition(topic, p) for p in partitions)

        self._run(start())
        return self

    def read(self) -> dict[str, int]:
        async def read() -> dict[str, int]:
            assert self.consumer is not None
            ends = await self.consumer.end_offsets(self.parts)
            out = dict.fromkeys(self.topics, 0)
            for tp, end in ends.items():
                out[tp.topic] += end
            return out

        result: dict[str, int] = self._run(read())
        return result

    def stop(self) -> None:
        if self.consumer is not None:
            self._run(self.consumer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class World:
    stack: Stack
    schema: Any
    offsets: Offsets
    topics: Topics
    app_id: str
    app_secret: str
    hook_id: str
    xml_name: str
    link_token: str
    http: httpx.Client
    ran: dict[str, int] = field(default_factory=dict)

    def credentials(self, path: str, auth: str, garbage: str = "") -> dict[str, str]:
        """Headers for `auth`: "valid", "none", "wrong" or "garbage" (`garbage` as sent)
        credentials of the path's dialect."""
        if auth == "none":
            return {}
        if auth == "garbage":
            return {"Authorization": garbage, "X-APP-ID": garbage, "X-APP-SECRET": garbage}
        dialect = _dialect(path)
        wrong = auth == "wrong"
        if path == "/webhooks/focus/nfse":
            secret = self.stack.settings.focus_webhook_secret
            return {"Authorization": "x" + secret if wrong else secret}
        if dialect == "wuro":
            secret = "x" + self.app_secret if wrong else self.app_secret
            return {"X-APP-ID": self.app_id, "X-APP-SECRET": secret}
        token = "nope" + uuid.uuid4().hex if wrong else self.stack.token
        if dialect == "hubsoft":
            return {"Authorization": f"Bearer {token}"}
        return {"Authorization": "Basic " + _b64(f"{token}:")}

    def note_exists(self, kind: str, ref: str) -> bool:
        r = self.http.get(f"/v2/{kind}/{quote(ref, safe='')}", auth=(self.stack.token, ""))
        return r.status_code == 200


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.fixture(scope="module", params=DATABASES)
def world(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[World]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    database_url = f"sqlite:///{tmp / 'nf.db'}"
    if request.param == "postgres":
        pg: ThrowawayPostgres = request.getfixturevalue("postgres")
        database_url = pg.create_database(f"hostile_{uuid.uuid4().hex[:8]}")
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"h{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=database_url,
        max_body_bytes=64_000,
        cancel_wait=1.0,
        nfce_wait=1.0,
        sync_email_wait=1.0,
    ).replace(billing_link_secret="link-" + uuid.uuid4().hex)
    stack = Stack(settings, tmp, consumers=("emission", "billing"))
    offsets: Offsets | None = None
    http = httpx.Client(timeout=15)
    try:
        stack.start()
        http.base_url = httpx.URL(stack.base)
        out = stack.run("billing-app", "acme").splitlines()
        app_id = next(x.split()[-1] for x in out if x.startswith("X-APP-ID"))
        app_secret = next(x.split()[-1] for x in out if x.startswith("X-APP-SECRET"))
        auth = (stack.token, "")
        # Something to aim at: an authorized note, an invoice, a hook.
        r = http.post(f"/v2/nfse?ref={SEED_REF}", json=with_valid_cnpjs(JSON_EXAMPLE), auth=auth)
        assert r.status_code == 202, r.text
        note = stack.wait_status(SEED_REF, {"autorizado"})
        invoice = {"uid": SEED_UID, "number": "F-1", "valor": "89.90",
                   "data_emissao": "2026-03-01", "data_vencimento": "2026-03-10",
                   "customer": {"nome": "Maria", "email": "maria@cliente.example"}}  # fmt: skip
        event = {"event_id": "seed-1", "type": "issued", "occurred_at": "2026-03-01T10:00:00Z",
                 "invoice": invoice}  # fmt: skip
        hubsoft = {"Authorization": f"Bearer {stack.token}"}
        r = http.post("/api/v1/integracao/faturas/eventos", json=[event], headers=hubsoft)
        assert r.status_code == 202, r.text
        wuro = {"X-APP-ID": app_id, "X-APP-SECRET": app_secret}
        wait_for(
            lambda: http.post(f"/api/v3.2/invoice/{SEED_UID}/mail", json={"to": "x@y.example"},
                              headers={**wuro, "X-APP-SECRET": "wrong"}).status_code == 401
            and http.get("/api/v1/integracao/cliente/financeiro?busca=codigo_cliente"
                         "&termo_busca=x", headers=hubsoft).status_code == 200,
            30,
        )  # fmt: skip
        # A public address: private ones are refused at creation (issue 19).
        r = http.post("/v2/hooks", json={"event": "nfse", "url": "http://93.184.216.34:9/h"},
                      auth=auth)  # fmt: skip
        assert r.status_code == 200, r.text
        topics = Topics(settings.kafka_topic_prefix)
        offsets = Offsets(
            settings.kafka_bootstrap,
            [
                topics.nfse_commands,
                topics.nfce_commands,
                topics.provider_events,
                topics.billing_events,
                topics.billing_commands,
            ],
        ).start()
        schema = schemathesis.openapi.from_url(f"{stack.base}/openapi.json", timeout=10)
        w = World(
            stack=stack,
            schema=schema,
            offsets=offsets,
            topics=topics,
            app_id=app_id,
            app_secret=app_secret,
            hook_id=r.json()["id"],
            xml_name=note["caminho_xml_nota_fiscal"].rsplit("/", 1)[-1],
            link_token=b.sign_link(settings.billing_link_secret, "acme", SEED_UID),
            http=http,
        )
        yield w
        print(f"\nhostile input: {sum(w.ran.values())} requests over {len(w.ran)} operations")
    finally:
        if offsets is not None:
            offsets.stop()
        http.close()
        stack.stop()


# --- what an answer promises --------------------------------------------------------------


def _json(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_shape(dialect: str, body: Any) -> bool:
    if dialect == "hubsoft":
        return isinstance(body, dict) and body.get("status") == "error" and _str(body.get("msg"))
    if dialect == "wuro":
        error = body.get("error") if isinstance(body, dict) else None
        return isinstance(error, dict) and _str(error.get("code")) and _str(error.get("message"))
    return isinstance(body, dict) and _str(body.get("codigo")) and _str(body.get("mensagem"))


def _str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def expected_records(w: World, op_id: str, status: int, body: Any) -> dict[str, int]:
    """The records an answer promises on the command topics (topic -> count)."""
    t = w.topics
    if not 200 <= status < 300:
        return {}
    if op_id in ("createNfse", "emailNfse", "refireHooks", "cancelNfse"):
        return {t.nfse_commands: 1}
    if op_id in ("createNfce", "cancelNfce"):
        return {t.nfce_commands: 1}
    if op_id == "focusNfseCallback":
        return {t.provider_events: 1}
    if op_id == "faturasEventos":
        return {t.billing_events: len(body["eventos"])}
    if op_id == "wuroInvoiceMail":
        return {t.billing_commands: 1}
    if op_id == "hubsoftEnviarEmail":
        # Published only when some recipient is a valid address.
        invalid = "Endereço de e-mail inválido"
        sent = any(e.get("mensagem_erro") != invalid for e in body["emails_enviados"])
        return {t.nfse_commands: 1} if sent else {}
    return {}


# A cancellation is published once the note passes the ingress's checks; the consumer may still
# refuse it (already cancelled, not authorized, unknown by now): those answers follow a publish.
CONSUMER_VERDICTS = {(400, "nfe_cancelada"), (400, "nfe_nao_autorizada"), (404, "nao_encontrado")}


def check(w: World, op_id: str, path: str, case: Any, auth: str, garbage: str = "") -> None:
    kind = "nfse" if "/nfse" in path else "nfce"
    may_be_verdict = op_id in ("cancelNfse", "cancelNfce") and w.note_exists(
        kind, str((case.path_parameters or {}).get("ref", ""))
    )
    before = w.offsets.read()
    start = time.monotonic()
    response = case.call(
        base_url=w.stack.base, headers=w.credentials(path, auth, garbage), timeout=TIME_BOUND + 10
    )
    elapsed = time.monotonic() - start
    after = w.offsets.read()
    status = response.status_code
    body = _json(response)
    new = {topic: after[topic] - before[topic] for topic in after if after[topic] != before[topic]}
    where = f"{case.method} {case.formatted_path} ({auth} credentials) -> {status} {body!r:.300}"
    reproduce = case.as_curl_command()
    assert status < 500, f"server error: {where}\n{reproduce}"
    assert elapsed < TIME_BOUND, f"took {elapsed:.1f}s: {where}\n{reproduce}"
    if 400 <= status < 500:
        dialect = _dialect(path)
        assert _error_shape(dialect, body), f"not a {dialect} error: {where}\n{reproduce}"
        if auth != "valid" and op_id not in ("getNfseXml", "wuroInvoicePdf", "wuroInvoiceHtml"):
            assert status in (400, 401, 403, 404, 405, 413, 415), where
    if auth != "valid" and op_id in PROTECTED:
        assert status >= 400, f"answered without valid credentials: {where}\n{reproduce}"
    expected = expected_records(w, op_id, status, body)
    verdict = isinstance(body, dict) and (status, body.get("codigo")) in CONSUMER_VERDICTS
    if may_be_verdict and verdict and new in ({}, {w.topics.nfse_commands: 1},
                                              {w.topics.nfce_commands: 1}):  # fmt: skip
        return
    assert new == expected, f"published {new}, expected {expected}: {where}\n{reproduce}"


# What a header can carry (latin-1 without control characters), after a scheme or not.
GARBAGE_CREDENTIALS = st.tuples(
    st.sampled_from(["Basic ", "basic ", "Bearer ", "", "Basic  "]),
    st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=40),
).map(lambda parts: (parts[0] + parts[1]).strip())


@pytest.mark.parametrize(("method", "path", "op_id"), OPERATIONS, ids=[o[2] for o in OPERATIONS])
def test_hostile_requests(world: World, method: str, path: str, op_id: str) -> None:
    w = world
    operation = w.schema[path][method]
    known = {"ref": SEED_REF, "uid": SEED_UID, "id": w.hook_id, "name": w.xml_name}

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        # A schema-valid NFC-e takes hypothesis ~1.5 s to build (the schema is large); its
        # validation is fuzzed in depth by tests/unit/nfce.
        slow = op_id == "createNfce" and mode is GenerationMode.POSITIVE

        @settings(
            max_examples=max(1, EXAMPLES // 3) if slow else EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            auth=st.sampled_from(["valid", "valid", "none", "wrong", "garbage"]),
            garbage=GARBAGE_CREDENTIALS,
            aim=st.booleans(),
        )
        def run(case: Any, auth: str, garbage: str, aim: bool) -> None:
            if aim and case.path_parameters:
                for name in case.path_parameters:
                    if name in known:
                        case.path_parameters[name] = known[name]
            if aim and op_id in ("wuroInvoicePdf", "wuroInvoiceHtml"):
                case.query = {**(case.query or {}), "token": w.link_token}
            w.ran[op_id] = w.ran.get(op_id, 0) + 1
            check(w, op_id, path, case, auth, garbage)

        try:
            run()
        except Unsatisfiable:
            # Nothing in this operation can break its schema (a lone free-text path
            # parameter): there are no negative cases to send.
            assert mode is GenerationMode.NEGATIVE, op_id


# Inputs found hostile before (each was a 500): kept as explicit cases, whatever the fuzzer draws.
EXPLICIT = [
    # A non-ASCII Basic credential: base64 decoding raised ValueError.
    ("GET", "/v2/hooks", {"headers": {"Authorization": "Basic \xe9t\xe9"}}),
    ("POST", "/v2/nfse", {"headers": {"Authorization": "Basic \xff"}, "query": {"ref": "a1"}}),
    # A Unicode digit that is not an ASCII one: int() refused what isdigit() accepted.
    ("GET", "/api/v1/integracao/cliente/financeiro",
     {"query": {"busca": "codigo_cliente", "termo_busca": "1", "limit": "\u00b2"}}),
    ("POST", "/api/v1/integracao/cliente/nota_fiscal/enviar_email",
     {"body": {"id_nota_fiscal": "\u00b9", "tipo_documento": "nfse"}}),
    # An amount as a huge JSON number: quantize() raised InvalidOperation.
    ("POST", "/api/v1/integracao/faturas/eventos",
     {"body": [{"event_id": "big", "type": "issued", "occurred_at": "2026-03-01T10:00:00Z",
                "invoice": {"uid": "BIG", "valor": 1e300, "data_vencimento": "2026-03-10"}}]}),
    # A path parameter that is not one path segment: no route matches, yet the answer must
    # still be in the dialect of the path.
    ("POST", "/api/v3.2/invoice/{uid}/mail", {"path": {"uid": "a/b"}, "body": {}}),
    ("GET", "/v2/nfse/{ref}", {"path": {"ref": "a/b"}}),
    # NUL: PostgreSQL refuses it in text, wherever it would reach a query.
    ("GET", "/v2/nfse/{ref}", {"path": {"ref": "a\x00b"}}),
    ("GET", "/v2/hooks/{id}", {"path": {"id": "a\x00b"}}),
    ("GET", "/notas_fiscais_servico/{name}", {"path": {"name": "a\x00b.xml"}}),
    ("GET", "/api/v3.2/invoice/{uid}/html", {"path": {"uid": "a\x00b"}, "query": {"token": "x"}}),
    ("POST", "/api/v3.2/invoice/{uid}/mail", {"path": {"uid": "a\x00b"}, "body": {}}),
    ("GET", "/api/v1/integracao/cliente/financeiro",
     {"query": {"busca": "codigo_cliente", "termo_busca": "a\x00b"}}),
    ("POST", "/v2/hooks", {"body": {"event": "nfse", "url": "http://127.0.0.1:9/h",
                                    "authorization": "a\x00b"}}),
    ("POST", "/v2/hooks", {"body": {"event": "nfse", "url": "http://a\x00b/h"}}),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "parts"), EXPLICIT)
def test_explicit_hostile_requests(
    world: World, method: str, path: str, parts: dict[str, Any]
) -> None:
    w = world
    op_id = next(o for m, p, o in OPERATIONS if (m, p) == (method, path))
    headers = parts.get("headers")
    given_auth = headers is None
    case = w.schema[path][method].Case(
        path_parameters=parts.get("path"),
        query=parts.get("query"),
        body=parts.get("body", NOT_SET),
        media_type="application/json" if "body" in parts else None,
        headers=headers,
    )
    check(w, op_id, path, case, "valid" if given_auth else "none")
