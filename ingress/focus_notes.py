"""The Focus NFS-e families' shared note routes (`/v2/nfse`, `/v2/nfsen`): consult, cancel,
e-mail, hooks again, the XML downloads, and their OpenAPI paths. Each family's module
(`ingress.focus_nfse`, `ingress.focus_nfsen`) brings its create route and document schema."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.accounts import Provider
from notaflow.emails import MAX_PER_REQUEST, valid_email
from notaflow.errors import BusUnavailable
from notaflow.focus_kinds import FocusKind
from notaflow.ingress.account_check import refuse_disabled
from notaflow.ingress.cancellation import cancel_route as focus_cancel_route
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.focus_request import authenticate, command, note_or_404
from notaflow.ingress.openapi_parts import (
    CREATE_ERRORS,
    ERROS,
    FOCUS_AUTH,
    NOTE_BODY_ERRORS,
    REF_PARAM,
    SCHEMAS,
    focus_errors,
    json_response,
)
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import XML_PREFIXES, can_email
from notaflow.nfse import validate_justificativa
from notaflow.store import Tenant
from notaflow.views import nfse_view

Handler = Callable[[Request], Awaitable[Response]]


_COMPLETA = {"1": True, "true": True, "0": False, "false": False, "": False}


def completa(request: Request) -> bool:
    """`?completa=` as clients send it: 1/0, or a bool as Python's requests writes it
    (`params={"completa": True}` sends "True"). Anything else is a clear 400."""
    value = request.query_params.get("completa")
    if value is None:
        return False
    full = _COMPLETA.get(value.strip().lower())
    if full is None:
        raise FOCUS.invalid('Parâmetro "completa" inválido: use 1, 0, true ou false')
    return full


def get_route(kind: FocusKind) -> Handler:
    async def get_note(request: Request) -> Response:
        d = deps(request)
        tenant = await authenticate(request, d)
        doc = await note_or_404(d, tenant, kind.kind, request.path_params["ref"])
        # Beyond Focus: the numeric id other dialects name the note by (HubSoft id_nota_fiscal).
        view = {**nfse_view(doc), "id": doc.id}
        if completa(request):
            # The body as it went to the provider: normalised known fields, the rest as sent.
            view["requisicao_nota_fiscal"] = doc.payload
        return FastJSONResponse(view)

    return get_note


def xml_route(prefix: str) -> Handler:
    """The XML (and the cancellation XML) of a note, under the name notaflow gave it below
    `prefix` (`notaflow.lifecycle.xml_path`). Like Focus, the unguessable path is the credential."""

    async def xml(request: Request) -> Response:
        blob = await deps(request).documents.get_blob(prefix + request.path_params["name"])
        if blob is None:
            raise FOCUS.not_found()
        content_type, data = blob
        return Response(data, media_type=content_type)

    return xml


def cancel_route(kind: FocusKind) -> Handler:
    return focus_cancel_route(
        kind.kind,
        kind.cancel_type,
        reason=("justificativa", validate_justificativa),
        empty_body=None,
        topic=lambda topics: topics.nfse_commands,
        wait=lambda settings: settings.cancel_wait,
        view=nfse_view,
        cancelled_body=lambda _doc: {"status": "cancelado"},  # seed 001's answer
    )


def email_route(kind: FocusKind) -> Handler:
    """A copy of an authorized note to up to 10 addresses, sent in the background."""

    async def email(request: Request) -> Response:
        d = deps(request)
        tenant = await authenticate(request, d)
        ref = request.path_params["ref"]
        body = await FOCUS.json(request, d.settings.max_body_bytes)
        emails = body.get("emails") if isinstance(body, dict) else None
        if emails is None:
            raise FOCUS.invalid('Parâmetro "emails" não informado')
        if not isinstance(emails, list) or not emails:
            raise FOCUS.invalid('Parâmetro "emails" deve ser uma lista de e-mails')
        if len(emails) > MAX_PER_REQUEST:
            raise FOCUS.invalid(
                f'Parâmetro "emails" aceita no máximo {MAX_PER_REQUEST} e-mails por vez'
            )
        for address in emails:
            if not isinstance(address, str) or not valid_email(address):
                raise FOCUS.invalid(f"E-mail inválido: {address}")
        doc = await note_or_404(d, tenant, kind.kind, ref)
        if not can_email(doc.status):
            raise FocusError(400, "nfe_nao_autorizada", "Nota fiscal não autorizada")
        await refuse_disabled(d, tenant.id, doc.cnpj_prestador, Provider.SMTP)
        unique = list(dict.fromkeys(emails))
        await _publish(d, tenant, kind, ref, kind.email_type, {"emails": unique}, request.headers)
        return FastJSONResponse({"emails": unique})

    return email


def hook_route(kind: FocusKind) -> Handler:
    """Deliver the note's current state to its hooks again (answers the hooks fired)."""

    async def refire_hook(request: Request) -> Response:
        d = deps(request)
        tenant = await authenticate(request, d)
        ref = request.path_params["ref"]
        doc = await note_or_404(d, tenant, kind.kind, ref)
        fired = await d.hooks.matching(tenant.id, kind.kind, doc.cnpj_prestador)
        await _publish(d, tenant, kind, ref, kind.hook_type, {}, request.headers)
        return FastJSONResponse([hook.public() for hook in fired])

    return refire_hook


async def _publish(
    d: IngressDeps,
    tenant: Tenant,
    kind: FocusKind,
    ref: str,
    event_type: str,
    data: dict[str, Any],
    trace: Mapping[str, str],
) -> None:
    """A command about a note that claims nothing (e-mail, hooks again): published on its own."""
    event = command(tenant, ref, event_type, data, trace)
    key = t.document_key(tenant.id, kind.kind, ref)
    try:
        await d.bus.publish(d.topics.nfse_commands, event, key)
    except BusUnavailable as exc:
        raise FOCUS.unavailable() from exc


def note_routes(kind: FocusKind, create: Handler) -> list[Route]:
    """A Focus NFS-e family's routes (`/v2/nfse`, `/v2/nfsen`): the same verbs and answers."""
    base = kind.api_path
    prefix = XML_PREFIXES[kind.kind]
    return [
        Route(base, create, methods=["POST"]),
        Route(base + "/{ref}", get_route(kind), methods=["GET"]),
        Route(base + "/{ref}", cancel_route(kind), methods=["DELETE"]),
        Route(base + "/{ref}/email", email_route(kind), methods=["POST"]),
        Route(base + "/{ref}/hook", hook_route(kind), methods=["POST"]),
        Route(prefix + "{name}", xml_route(prefix), methods=["GET"]),
    ]


# --- OpenAPI ---------------------------------------------------------------------------------


def note_paths(
    kind: FocusKind, *, tag: str, noun: str, schema: str, refire_id: str, xml_summary: str
) -> dict[str, Any]:
    """The OpenAPI paths of `note_routes(kind, ...)`: the same answers for every NFS-e family,
    each with its own document schema, tag and operation ids."""
    base, xml_path = kind.api_path, XML_PREFIXES[kind.kind] + "{name}"
    tags, view = [tag], {"$ref": f"{SCHEMAS}NfseView"}
    return {
        base: {
            "post": {
                "tags": tags,
                "operationId": f"create{schema}",
                "summary": f"Emitir uma {noun}",
                "description": "Valida, registra a ref e publica o comando (acks=all); a "
                "autorização segue de forma assíncrona. O corpo é lido como JSON qualquer que "
                "seja o Content-Type.",
                "security": FOCUS_AUTH,
                "parameters": [{**REF_PARAM, "in": "query"}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": SCHEMAS + schema}}},
                },
                "responses": {
                    "202": json_response({"$ref": f"{SCHEMAS}NfseAccepted"}, "Aceita"),
                    **focus_errors(
                        *CREATE_ERRORS,
                        s400=["requisicao_invalida", "empresa_nao_habilitada"],
                    ),
                },
            }
        },
        base + "/{ref}": {
            "parameters": [REF_PARAM],
            "get": {
                "tags": tags,
                "operationId": f"get{schema}",
                "summary": f"Consultar uma {noun}",
                "security": FOCUS_AUTH,
                "parameters": [
                    {
                        "name": "completa",
                        "in": "query",
                        "required": False,
                        "description": "`1` ou `true` inclui `requisicao_nota_fiscal`, o corpo "
                        "como foi enviado ao provedor.",
                        "schema": {"enum": ["0", "1", "true", "false"]},
                    }
                ],
                "responses": {
                    "200": json_response(view, "A nota"),
                    **focus_errors(401, 403, 404),
                },
            },
            "delete": {
                "tags": tags,
                "operationId": f"cancel{schema}",
                "summary": f"Cancelar uma {noun}",
                "description": "Síncrono como na Focus; passado NOTAFLOW_CANCEL_WAIT, 202 com a "
                "nota como está e o resultado por GET e webhook.",
                "security": FOCUS_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _JUSTIFICATIVA}},
                },
                "responses": {
                    "200": json_response(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"enum": ["cancelado", "erro_cancelamento"]},
                                "erros": ERROS,
                            },
                        },
                        "Cancelada, ou recusada pela prefeitura",
                    ),
                    "202": json_response(view, "Ainda sem resposta do provedor: a nota como está"),
                    **focus_errors(
                        *NOTE_BODY_ERRORS,
                        s400=["requisicao_invalida", "nfe_cancelada", "nfe_nao_autorizada"],
                    ),
                },
            },
        },
        base + "/{ref}/email": {
            "parameters": [REF_PARAM],
            "post": {
                "tags": tags,
                "operationId": f"email{schema}",
                "summary": "Enviar a nota por e-mail",
                "description": "Até 10 endereços; responde na hora, envio em segundo plano.",
                "security": FOCUS_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _EMAILS}},
                },
                "responses": {
                    "200": json_response(
                        {
                            "type": "object",
                            "properties": {
                                "emails": {"type": "array", "items": {"type": "string"}}
                            },
                        },
                        "Os endereços, sem repetição",
                    ),
                    **focus_errors(
                        *NOTE_BODY_ERRORS,
                        s400=["requisicao_invalida", "nfe_nao_autorizada"],
                    ),
                },
            },
        },
        base + "/{ref}/hook": {
            "parameters": [REF_PARAM],
            "post": {
                "tags": tags,
                "operationId": refire_id,
                "summary": "Disparar de novo os gatilhos da nota",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": json_response(
                        {"type": "array", "items": {"$ref": f"{SCHEMAS}Hook"}},
                        "Os gatilhos disparados",
                    ),
                    **focus_errors(401, 403, 404, 503),
                },
            },
        },
        xml_path: {
            "get": {
                "tags": tags,
                "operationId": f"get{schema}Xml",
                "summary": xml_summary,
                "description": "O caminho de `caminho_xml_nota_fiscal`; como na Focus, o caminho "
                "impossível de adivinhar é a credencial.",
                "security": [],
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "O XML",
                        "content": {"application/xml": {"schema": {"type": "string"}}},
                    },
                    **focus_errors(404),
                },
            }
        },
    }


_JUSTIFICATIVA = {
    "type": "object",
    "required": ["justificativa"],
    "properties": {"justificativa": {"type": "string", "minLength": 15, "maxLength": 255}},
}
_EMAILS = {
    "type": "object",
    "required": ["emails"],
    "properties": {
        "emails": {
            "type": "array",
            "minItems": 1,
            "maxItems": 10,
            "items": {"type": "string", "format": "email"},
        }
    },
}
