"""Provider callbacks: Focus NFe calls our hook when a note's status changes.

Focus proves itself only with the static value registered for the hook, in a configurable
header; it is compared in constant time. A valid callback is published to the provider-events
topic (the emission consumer applies it); duplicates are harmless there.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable
from notaflow.ingress.body import read_body
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.openapi_parts import Description, embedded_schema, focus_errors, json_response
from notaflow.ingress.responses import FastJSONResponse
from notaflow.schemas import validator
from notaflow.tracing import trace_fields

SOURCE = t.SOURCE_FOCUS_WEBHOOK


# The answer to an accepted callback, as bytes: the raw route (ingress.app) sends it as it is.
RECEIVED = {"status": "recebido"}


async def accept_callback(
    d: IngressDeps,
    given: str,
    content_type: str,
    read: Callable[[int], Awaitable[bytes]],
    trace: Mapping[str, str],
) -> None:
    """A Focus callback without Starlette's Request (it also runs as a raw ASGI route, see
    `ingress.app`): `given` is the value of the configured header; returns once Kafka
    acknowledged the event, raises FocusError for every refusal."""
    secret = d.settings.focus_webhook_secret
    if not secret or not hmac.compare_digest(given.encode(), secret.encode()):
        raise FocusError(401, "nao_autorizado", "Autorização do webhook inválida")
    body = await FOCUS.parse(content_type, read, d.settings.max_body_bytes)
    if not isinstance(body, dict) or not validator("focus_callback").is_valid(body):
        raise FocusError(
            400, "requisicao_invalida", "Corpo do webhook fora do formato da Focus NFe"
        )
    doc = await d.documents.by_provider_ref(str(body["ref"]))
    # Same key as the document's commands, so the consumer sees them in order.
    key = (
        t.document_key(doc.tenant_id, doc.kind, doc.ref)
        if doc is not None
        else f"provider:{body['ref']}".encode()
    )
    event = Event(
        type=t.FOCUS_NFSE_CALLBACK,
        source=SOURCE,
        data=body,
        subject=str(body["ref"]),
        tenant=doc.tenant_id if doc is not None else "",
        **trace_fields(trace),
    )
    try:
        await d.bus.publish(d.topics.provider_events, event, key)
    except BusUnavailable as exc:
        raise FOCUS.unavailable() from exc  # Focus retries the delivery later


async def focus_nfse_callback(request: Request) -> Response:
    d = deps(request)
    headers = request.headers
    await accept_callback(
        d,
        headers.get(d.settings.focus_webhook_header, ""),
        headers.get("content-type", ""),
        lambda limit: read_body(request, limit),
        headers,
    )
    return FastJSONResponse(RECEIVED)


routes = [Route("/webhooks/focus/nfse", focus_nfse_callback, methods=["POST"])]

OPENAPI = Description(
    paths={
        "/webhooks/focus/nfse": {
            "post": {
                "tags": ["Provedores"],
                "operationId": "focusNfseCallback",
                "summary": "Callback da Focus NFe (mudança de status)",
                "security": [{"focusWebhookKey": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/FocusCallback"}
                        }
                    },
                },
                "responses": {
                    "200": json_response(
                        {"type": "object", "properties": {"status": {"const": "recebido"}}},
                        "Publicado para o consumidor de emissão",
                    ),
                    **focus_errors(400, 401, 413, 415, 503, s401=["nao_autorizado"]),
                },
            }
        },
    },
    schemas={"FocusCallback": embedded_schema("focus_callback", "FocusCallback")},
    security_schemes={
        "focusWebhookKey": {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "O valor estático registrado na Focus para o hook "
            "(NOTAFLOW_FOCUS_WEBHOOK_SECRET), no cabeçalho NOTAFLOW_FOCUS_WEBHOOK_HEADER "
            "(Authorization por padrão); comparado em tempo constante.",
        },
    },
)
