"""Tracing across processes: a client's traceparent continues through the ingress, the Kafka
record, the emission consumer and the Focus call, the callback's lifecycle event, and the
notification consumer's e-mail — one trace id end to end, every process exporting its spans;
the client's tracestate and baggage ride every record the command causes."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notaflow.launch.broker import EmbeddedBroker
from notaflow.settings import Settings
from notaflow.topics import Topics
from testkit.kafka import read_topic
from testkit.receiver import Receiver, ReceiverServer
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack
from testkit.waiting import wait_for


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = ReceiverServer()
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def traced(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Path]]:
    tmp = tmp_path_factory.mktemp("trace")
    sink = ThreadedSmtpSink().start()
    spans = tmp / "spans"
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"tr{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=f"sqlite:///{tmp / 'nf.db'}",
        **sink.settings(),
        smtp_pause=0.05,
        otel_dir=str(spans),
        hooks_allow_private=True,  # the hook receiver is on loopback
    )
    stack = Stack(settings, tmp, consumers=("emission", "notification")).start()
    yield stack, spans
    stack.stop()
    sink.stop()


def read_spans(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in directory.glob("*.jsonl"):
        out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def _records_of(stack: Stack, topic: str, ref: str) -> list[dict[str, str]]:
    """The headers (as text) of `topic`'s records about `ref`, each with its value as `_data`."""
    out = []
    for record in read_topic(stack.settings.kafka_bootstrap, topic):
        headers = {k: v.decode() for k, v in record.headers or () if v is not None}
        if headers.get("ce_subject") == ref:
            out.append({**headers, "_data": record.value.decode()})
    return out


def _lifecycle(stack: Stack) -> list[dict[str, str]]:
    return _records_of(stack, Topics(stack.settings.kafka_topic_prefix).lifecycle, "tr1")


def _status(headers: dict[str, str]) -> str:
    return str(json.loads(headers["_data"]).get("status"))


def _baggage(header: str) -> dict[str, str]:
    return dict(item.strip().split("=", 1) for item in header.split(",") if item.strip())


def _traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def test_one_trace_from_request_to_provider_and_to_email(
    traced: tuple[Stack, Path], receiver: Receiver
) -> None:
    stack, directory = traced

    def of(trace_id: str) -> list[dict[str, Any]]:
        return [s for s in read_spans(directory) if s["trace_id"] == trace_id]

    def written(trace_id: str, leaf: str, root: str) -> bool:
        """The span `leaf` and every span up to `root` are in the files: a child ends (and is
        exported) before its parent, so the leaf alone does not mean the chain."""
        by_id = {s["span_id"]: s for s in of(trace_id)}
        for span in by_id.values():
            if span["name"] == leaf:
                while span["name"] != root:
                    if span["parent_id"] not in by_id:
                        return False
                    span = by_id[span["parent_id"]]
                return True
        return False

    def up_to_request(span: dict[str, Any], by_id: dict[str, Any]) -> dict[str, Any]:
        """The ingress's server span above a consumer's `process` span: its parent, or the
        parent of the PRODUCER span (`send <topic>`) between them."""
        parent = by_id[span["parent_id"]]
        if parent["kind"] == "PRODUCER":
            attrs = parent["attributes"]
            assert parent["name"] == f"send {attrs['messaging.destination.name']}"
            assert attrs["messaging.system"] == "kafka"
            assert attrs["messaging.operation.type"] == "send"
            parent = by_id[parent["parent_id"]]
        assert parent["kind"] == "SERVER"
        return dict(parent)

    emit_trace, header = _traceparent()
    tracestate, baggage = "erp=t61rcWkgMzE,rojo=00f067aa0ba902b7", "pedido=4711,lote=ab%20c"
    with stack.client() as c:
        r = c.post(
            "/v2/nfse",
            params={"ref": "tr1"},
            json=with_valid_cnpjs(JSON_EXAMPLE),
            headers={"traceparent": header, "tracestate": tracestate, "baggage": baggage},
        )
        assert r.status_code == 202
    stack.wait_status("tr1", {"autorizado"})
    wait_for(lambda: written(emit_trace, "POST", "POST /v2/nfse"), 20)
    spans = of(emit_trace)
    by_id = {s["span_id"]: s for s in spans}
    # Semantic conventions: HTTP server "{method} {route}", HTTP client "{method}", messaging
    # "process {destination}", with the stable attribute names.
    focus = next(s for s in spans if s["name"] == "POST" and s["kind"] == "CLIENT")
    assert focus["attributes"]["peer.service"] == "focus"
    assert focus["attributes"]["http.request.method"] == "POST"
    assert focus["attributes"]["url.full"].startswith("http://127.0.0.1:")
    assert isinstance(focus["attributes"]["http.response.status_code"], int)
    process = by_id[focus["parent_id"]]
    assert process["service"] == "consumer-emission" and process["name"].endswith("nfse.commands")
    attrs = process["attributes"]
    assert process["kind"] == "CONSUMER"
    assert attrs["messaging.system"] == "kafka"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"].endswith("nfse.commands")
    assert attrs["messaging.consumer.group.name"] == "notaflow-emission"
    request = up_to_request(process, by_id)
    assert (request["service"], request["name"]) == ("ingress", "POST /v2/nfse")
    assert request["attributes"]["http.route"] == "/v2/nfse"
    assert request["attributes"]["http.request.method"] == "POST"
    assert request["attributes"]["http.response.status_code"] == 202

    # The command and the lifecycle event it caused carry the client's tracestate and baggage
    # (W3C propagators through each process), in the same trace. (`autorizado` follows Focus's
    # callback, a request of its own: Focus does not carry our trace.)
    topics = Topics(stack.settings.kafka_topic_prefix)
    command = _records_of(stack, topics.nfse_commands, "tr1")
    wait_for(lambda: any(_status(h) == "processando_autorizacao" for h in _lifecycle(stack)), 20)
    processing = [h for h in _lifecycle(stack) if _status(h) == "processando_autorizacao"]
    assert len(command) == 1 and len(processing) == 1
    for headers in command + processing:
        assert headers["traceparent"].split("-")[1] == emit_trace
        assert headers["tracestate"] == tracestate
        assert _baggage(headers["baggage"]) == _baggage(baggage)

    # Focus does not carry our trace through its callback, so the copy e-mail is the request
    # that shows the path to SMTP: HTTP -> Kafka -> notification consumer -> SMTP.
    mail_trace, header = _traceparent()
    with stack.client() as c:
        r = c.post(
            "/v2/nfse/tr1/email",
            json={"emails": ["trace@example.com"]},
            headers={"traceparent": header},
        )
        assert r.status_code == 200
    wait_for(lambda: written(mail_trace, "smtp send", "POST /v2/nfse/{ref}/email"), 20)
    spans = of(mail_trace)
    by_id = {s["span_id"]: s for s in spans}
    smtp = next(s for s in spans if s["name"] == "smtp send")
    process = by_id[smtp["parent_id"]]
    assert process["service"] == "consumer-notification"
    assert up_to_request(process, by_id)["name"] == "POST /v2/nfse/{ref}/email"

    # A hook re-fire shows the path to a client's webhook: HTTP -> Kafka -> notification
    # consumer -> the hook's POST, a client span naming the hook and its answer.
    with stack.client() as c:
        hook = c.post("/v2/hooks", json={"event": "nfse", "url": receiver.url("/traced")}).json()
        hook_trace, header = _traceparent()
        r = c.post("/v2/nfse/tr1/hook", headers={"traceparent": header})
        assert r.status_code in (200, 202), r.text
    wait_for(lambda: written(hook_trace, "POST", "POST /v2/nfse/{ref}/hook"), 20)
    spans = of(hook_trace)
    by_id = {s["span_id"]: s for s in spans}
    post = next(s for s in spans if s["name"] == "POST" and s["kind"] == "CLIENT")
    assert post["service"] == "consumer-notification"
    attrs = post["attributes"]
    assert attrs["peer.service"] == "webhook"
    assert attrs["notaflow.hook.id"] == hook["id"]
    assert attrs["http.request.method"] == "POST"
    assert attrs["url.full"] == receiver.url("/traced")
    assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", receiver.port)
    assert attrs["http.response.status_code"] == 200
    assert any(seen.path == "/traced" for seen in receiver.seen)
    assert up_to_request(by_id[post["parent_id"]], by_id)["name"] == "POST /v2/nfse/{ref}/hook"
