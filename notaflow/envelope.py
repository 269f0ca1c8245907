"""CloudEvents 1.0 in Kafka binary mode: attributes in `ce_*` headers, the data as JSON value."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from notaflow.errors import InvalidDocument

SPECVERSION = "1.0"
Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class Event:
    type: str
    source: str
    data: dict[str, Any]
    subject: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    tenant: str = ""
    # A lifecycle event's document status, as the `ce_status` extension attribute too: a
    # consumer that delivers only some statuses skips the others by this header, undecoded
    # (`notaflow.routing`). The data's "status" stays the truth.
    status: str = ""
    # W3C Trace Context and Baggage (notaflow.tracing.TRACE_HEADERS), as record headers.
    traceparent: str = ""
    tracestate: str = ""
    baggage: str = ""

    def trace(self) -> dict[str, str]:
        """The trace headers this event carries, for the events it causes."""
        return {"traceparent": self.traceparent, "tracestate": self.tracestate,
                "baggage": self.baggage}  # fmt: skip

    def headers(self) -> list[tuple[str, bytes]]:
        out = [
            ("ce_specversion", SPECVERSION.encode()),
            ("ce_id", self.id.encode()),
            ("ce_type", self.type.encode()),
            ("ce_source", self.source.encode()),
            ("ce_time", self.time.encode()),
            ("content-type", b"application/json"),
        ]
        if self.subject:
            out.append(("ce_subject", self.subject.encode()))
        if self.tenant:
            out.append(("ce_tenant", self.tenant.encode()))
        if self.status:
            out.append(("ce_status", self.status.encode()))
        for name, value in self.trace().items():
            if value:
                out.append((name, value.encode()))
        return out

    def value(self) -> bytes:
        return orjson.dumps(self.data)


def decode(headers: Headers | None, value: bytes | None) -> Event:
    """Parse a record; raise InvalidDocument for anything that is not a CloudEvent we can read."""
    attrs: dict[str, str] = {}
    for name, raw in headers or ():
        try:
            attrs[name] = raw.decode() if raw is not None else ""
        except UnicodeDecodeError as exc:
            raise InvalidDocument(name, f"header {name} is not UTF-8") from exc
    for required in ("ce_id", "ce_type", "ce_source"):
        if not attrs.get(required):
            raise InvalidDocument(required, f"missing CloudEvents header {required}")
    if attrs.get("ce_specversion", SPECVERSION) != SPECVERSION:
        raise InvalidDocument("ce_specversion", "unsupported CloudEvents specversion")
    try:
        data = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise InvalidDocument("data", f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidDocument("data", "value must be a JSON object")
    return Event(
        type=attrs["ce_type"],
        source=attrs["ce_source"],
        data=data,
        subject=attrs.get("ce_subject", ""),
        id=attrs["ce_id"],
        time=attrs.get("ce_time", ""),
        tenant=attrs.get("ce_tenant", ""),
        status=attrs.get("ce_status", ""),
        traceparent=attrs.get("traceparent", ""),
        tracestate=attrs.get("tracestate", ""),
        baggage=attrs.get("baggage", ""),
    )
