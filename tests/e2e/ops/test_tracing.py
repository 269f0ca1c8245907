"""Tracing across processes: a client's traceparent continues through the ingress, the Kafka
record, the emission consumer and the Focus call, the callback's lifecycle event, and the
notification consumer's e-mail — one trace id end to end, every process exporting its spans."""

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
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack
from testkit.waiting import wait_for


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
        smtp_host="127.0.0.1",
        smtp_port=sink.port,
        smtp_security="none",
        smtp_pause=0.05,
        otel_dir=str(spans),
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


def _traceparent() -> tuple[str, str]:
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def test_one_trace_from_request_to_provider_and_to_email(traced: tuple[Stack, Path]) -> None:
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
    with stack.client() as c:
        r = c.post(
            "/v2/nfse",
            params={"ref": "tr1"},
            json=with_valid_cnpjs(JSON_EXAMPLE),
            headers={"traceparent": header},
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
