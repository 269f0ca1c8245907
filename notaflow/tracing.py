"""OpenTelemetry tracing, off by default: from the HTTP request through Kafka (the W3C
`traceparent` record header) to the provider call and the e-mail.

On with `NOTAFLOW_OTEL_ENDPOINT` (OTLP over HTTP, e.g. http://collector:4318/v1/traces) and/or
`NOTAFLOW_OTEL_DIR` (one JSON line per finished span in `<dir>/<service>-<pid>.jsonl`, for
development and the tests). Off, every call here is OpenTelemetry's no-op: nothing is
recorded and the request path pays next to nothing.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
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


def configure_tracing(service: str, endpoint: str = "", directory: str = "") -> bool:
    """Install the tracer provider for this process; False (and no-op tracing) when off."""
    global _enabled
    if not endpoint and not directory:
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
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


def context_from(traceparent: str | None) -> Context | None:
    return propagate.extract({"traceparent": traceparent}) if traceparent else None


def outgoing_traceparent(incoming: str = "") -> str:
    """The `traceparent` to put on what we publish or call: the current span when tracing is
    on, otherwise whatever came in (so a client's trace id still travels)."""
    if not _enabled:
        return incoming
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", incoming)


@contextmanager
def span(
    name: str,
    kind: SpanKind = SpanKind.INTERNAL,
    parent_traceparent: str | None = None,
    **attributes: Any,
) -> Iterator[Span | None]:
    if not _enabled:
        yield None
        return
    with tracer().start_as_current_span(
        name,
        context=context_from(parent_traceparent),
        kind=kind,
        attributes={k: v for k, v in attributes.items() if v is not None},
    ) as current:
        yield current


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
