"""OpenTelemetry tracing, off by default: from the HTTP request through Kafka (the W3C
`traceparent`, `tracestate` and `baggage` record headers) to the provider call and the e-mail.

On with OpenTelemetry's standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, OTLP over HTTP; the SDK reads the rest of `OTEL_*` itself:
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_PROPAGATORS`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SDK_DISABLED`...), the older `NOTAFLOW_OTEL_ENDPOINT`
(a full traces URL), and/or `NOTAFLOW_OTEL_DIR` (one JSON line per finished span in
`<dir>/<service>-<pid>.jsonl`, for development and the tests). Off, every call here is
OpenTelemetry's no-op: nothing is recorded and the request path pays next to nothing.

Span names and attributes follow OpenTelemetry's semantic conventions: HTTP server
(`POST /v2/nfse`, `http.request.method`, `http.route`, `http.response.status_code`), HTTP
client (`POST`, `url.full`, `server.address`), messaging (`send <topic>` / `process <topic>`,
`messaging.system=kafka`, `messaging.destination.name`, `messaging.consumer.group.name`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Span, SpanKind

_enabled = False


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines in a file of this process's own."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "kind": span.kind.name if span.kind else None,
                        "trace_id": format(ctx.trace_id, "032x") if ctx else None,
                        "span_id": format(ctx.span_id, "016x") if ctx else None,
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "service": span.resource.attributes.get("service.name"),
                        "attributes": dict(span.attributes or {}),
                        "status": span.status.status_code.name,
                    },
                    default=str,
                )
            )
        with self._lock, self._path.open("a") as f:
            f.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def configure_tracing(
    service: str, endpoint: str = "", directory: str = "", env: Mapping[str, str] | None = None
) -> bool:
    """Install the tracer provider for this process; False (and no-op tracing) when off.
    `env` holds the standard `OTEL_*` variables (the CLI passes the process environment)."""
    global _enabled
    env = {} if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    standard = (
        bool(
            env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
        and env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() != "none"
    )
    if not endpoint and not directory and not standard:
        return False
    attributes = {"service.version": build_version(), "service.namespace": "notaflow"}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service  # OTEL_SERVICE_NAME, when set, wins
    provider = TracerProvider(resource=Resource.create(attributes))
    if endpoint or standard:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Without an explicit endpoint the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT,
        # _HEADERS, _TIMEOUT, _COMPRESSION and _CERTIFICATE itself.
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        path = Path(directory) / f"{service}-{os.getpid()}.jsonl"
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(path)))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def tracer() -> trace.Tracer:
    return trace.get_tracer("notaflow")


def build_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("notaflow")
    except PackageNotFoundError:
        return "unknown"


def http_server_attributes(method: str, path: str, scheme: str, port: int | None) -> dict[str, Any]:
    return {
        "http.request.method": method,
        "url.path": path,
        "url.scheme": scheme,
        "server.port": port,
    }


def http_client_attributes(method: str, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "http.request.method": method,
        "url.full": url,
        "server.address": parts.hostname,
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
    }


def messaging_attributes(
    operation: str,
    topic: str,
    group: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """Kafka messaging attributes; `operation` is the operation type (send, process)."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
        "messaging.consumer.group.name": group,
        "messaging.destination.partition.id": None if partition is None else str(partition),
        "messaging.kafka.offset": offset,
        "messaging.batch.message_count": batch,
    }


#: The W3C headers of a trace: Trace Context (`traceparent`, `tracestate`) and Baggage. Every
#: record we publish carries all three, so a vendor's `tracestate` entries and the client's
#: `baggage` reach every process the command goes through, as they would over HTTP.
TRACE_HEADERS = ("traceparent", "tracestate", "baggage")


def trace_fields(incoming: Mapping[str, str] | None = None) -> dict[str, str]:
    """`traceparent`, `tracestate` and `baggage` for what we publish: with tracing on, the
    current context's (the propagators keep the client's tracestate and baggage, and the parent
    is our span); with it off, what came in, unchanged, as an intermediary passes them on."""
    passed = {name: (incoming or {}).get(name, "") or "" for name in TRACE_HEADERS}
    if not _enabled:
        return passed
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {name: carrier.get(name, passed[name]) for name in TRACE_HEADERS}


def with_current_traceparent(headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Record headers with `traceparent` pointing at the current span (the producer span), so
    the consumer's `process` span is its child; `tracestate` and `baggage` stay as they are."""
    if not _enabled:
        return headers
    current = trace_fields()["traceparent"]
    if not current:
        return headers
    return [(k, v) for k, v in headers if k != "traceparent"] + [("traceparent", current.encode())]


# What `span` is while tracing is off: no generator per record, call and publish.
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    carrier: Mapping[str, str] | None = None,
    **attributes: Any,
) -> contextlib.AbstractContextManager[Span | None]:
    if not _enabled:
        return _NO_SPAN
    return _span(name, kind, carrier, attributes)


def client_span(
    method: str, url: str, **attributes: Any
) -> contextlib.AbstractContextManager[Span | None]:
    """A CLIENT span around an HTTP call, named by its method, with the URL's attributes
    (`http_client_attributes`): made, URL parse included, only while tracing is on."""
    if not _enabled:
        return _NO_SPAN
    attributes.update(http_client_attributes(method, url))
    return _span(method, SpanKind.CLIENT, None, attributes)


@contextmanager
def _span(
    name: str, kind: SpanKind, carrier: Mapping[str, str] | None, attributes: dict[str, Any]
) -> Iterator[Span | None]:
    with tracer().start_as_current_span(
        name,
        context=propagate.extract(carrier) if carrier else None,
        kind=kind,
        attributes={k: v for k, v in attributes.items() if v is not None},
    ) as current:
        yield current


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
