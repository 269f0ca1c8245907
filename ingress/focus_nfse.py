"""Focus NFe dialect, NFS-e (seed 001): POST /v2/nfse?ref=, GET /v2/nfse/REF, XML downloads."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.accounts import Provider
from notaflow.emails import MAX_PER_REQUEST, valid_email
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument, RefInUse
from notaflow.focus_kinds import NFSE, FocusKind
from notaflow.ingress.account_check import refuse_disabled
from notaflow.ingress.auth import basic_user
from notaflow.ingress.body import read_body
from notaflow.ingress.cancellation import cancel_and_wait
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.openapi_parts import (
    CREATE_ERRORS,
    ERROS,
    FOCUS_AUTH,
    NOTE_BODY_ERRORS,
    REF_PARAM,
    SCHEMAS,
    Description,
    embedded_schema,
    focus_errors,
    json_response,
)
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import PROCESSING, XML_PREFIXES, can_email, is_issued
from notaflow.nfse import normalize_nfse, validate_justificativa, validate_ref
from notaflow.store import ClaimRequest, Tenant
from notaflow.tracing import trace_fields
from notaflow.views import nfse_view

KIND = "nfse"
SOURCE = t.SOURCE_INGRESS


def query_value(request: Request, name: str) -> str | None:
    """One query parameter without building Starlette's full multi-dict (measurable on the
    hot path); the first occurrence wins, as with `query_params.get`."""
    return query_string_value(request.scope.get("query_string", b""), name)


def query_string_value(query_string: bytes, name: str) -> str | None:
    prefix = name.encode() + b"="
    for part in query_string.split(b"&"):
        if part.startswith(prefix):
            return unquote_plus(part[len(prefix) :].decode("latin-1"))
    return None


async def authenticate(request: Request, d: IngressDeps) -> Tenant:
    return await authenticate_header(request.headers.get("authorization", ""), d)


async def authenticate_header(authorization: str, d: IngressDeps) -> Tenant:
    token = basic_user(authorization)
    if token is None:
        raise FOCUS.missing_credentials()
    tenant = await d.tenant_cache.lookup(token)
    if tenant is None:
        raise FOCUS.refused_credentials()
    return tenant


async def create_nfse(request: Request) -> Response:
    headers = request.headers
    cnpj, ref = await accept_nfse(
        deps(request),
        authorization=headers.get("authorization", ""),
        query_string=request.scope.get("query_string", b""),
        content_type=headers.get("content-type", ""),
        read=lambda limit: read_body(request, limit),
        trace=headers,
    )
    return FastJSONResponse(accepted_body(cnpj, ref), status_code=202)


def accepted_body(cnpj: str, ref: str) -> dict[str, str]:
    return {"cnpj_prestador": cnpj, "ref": ref, "status": PROCESSING}


async def accept_nfse(
    d: IngressDeps,
    authorization: str,
    query_string: bytes,
    content_type: str,
    read: Callable[[int], Awaitable[bytes]],
    trace: Mapping[str, str],
) -> tuple[str, str]:
    """POST /v2/nfse without Starlette's Request (the ingress's hot route also runs as a raw
    ASGI handler, see `ingress.app`): the prestador's CNPJ and the ref, once the ref is claimed
    and the command acknowledged by Kafka; FocusError for every refusal."""
    tenant = await authenticate_header(authorization, d)
    try:
        ref = validate_ref(query_string_value(query_string, "ref"))
    except InvalidDocument as exc:
        raise FOCUS.invalid(exc.message) from exc
    raw = await FOCUS.parse(content_type, read, d.settings.max_body_bytes)
    try:
        document = normalize_nfse(raw)
    except InvalidDocument as exc:
        raise FOCUS.invalid(exc.message) from exc
    cnpj = document["prestador"]["cnpj"]
    if cnpj not in tenant.cnpjs:
        raise FocusError(
            400, "empresa_nao_habilitada", "Emitente ainda não habilitado para emissão de NFSe"
        )
    await refuse_disabled(d, tenant.id, cnpj, Provider.FOCUS)
    command_id = str(uuid.uuid4())
    event = Event(
        type=t.NFSE_EMIT,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, "nfse": document},
        subject=ref,
        id=command_id,
        tenant=tenant.id,
        **trace_fields(trace),
    )
    claim = ClaimRequest(tenant.id, KIND, ref, cnpj, document, command_id, SOURCE)
    try:
        await d.intake.submit(claim, event, t.document_key(tenant.id, KIND, ref))
    except RefInUse as exc:
        if is_issued(exc.status):
            raise FocusError(422, "nfe_autorizada", "Nota fiscal já autorizada") from exc
        raise FocusError(422, "em_processamento", "Nota fiscal em processamento") from exc
    except BusUnavailable as exc:
        raise FOCUS.unavailable() from exc
    return cnpj, ref


async def get_nfse(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    doc = await d.documents.get(tenant.id, KIND, request.path_params["ref"])
    if doc is None:
        raise FOCUS.not_found()
    # Beyond Focus: the numeric id other dialects name the note by (HubSoft id_nota_fiscal).
    view = {**nfse_view(doc), "id": doc.id}
    if completa(request):
        # The body as it went to the provider: normalised known fields, the rest as sent.
        view["requisicao_nota_fiscal"] = doc.payload
    return FastJSONResponse(view)


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


Handler = Callable[[Request], Awaitable[Response]]


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
    """Synchronous, as at Focus: publish the cancel command, wait (bounded) for the
    cancellation consumer's answer; past the bound, 202 with the note as it stands."""

    async def cancel(request: Request) -> Response:
        d = deps(request)
        tenant = await authenticate(request, d)
        body = await FOCUS.json(request, d.settings.max_body_bytes)
        try:
            justificativa = validate_justificativa(body)
        except InvalidDocument as exc:
            raise FOCUS.invalid(exc.message) from exc
        return await cancel_and_wait(
            request,
            d,
            tenant,
            kind=kind.kind,
            ref=request.path_params["ref"],
            event_type=kind.cancel_type,
            topic=d.topics.nfse_commands,
            data={"justificativa": justificativa},
            wait=d.settings.cancel_wait,
            view=nfse_view,
            cancelled_body=lambda _doc: {"status": "cancelado"},  # seed 001's answer
        )

    return cancel


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
        doc = await d.documents.get(tenant.id, kind.kind, ref)
        if doc is None:
            raise FOCUS.not_found()
        if not can_email(doc.status):
            raise FocusError(400, "nfe_nao_autorizada", "Nota fiscal não autorizada")
        await refuse_disabled(d, tenant.id, doc.cnpj_prestador, Provider.SMTP)
        event = Event(
            type=kind.email_type,
            source=SOURCE,
            data={"tenant": tenant.id, "ref": ref, "emails": list(dict.fromkeys(emails))},
            subject=ref,
            tenant=tenant.id,
            **trace_fields(request.headers),
        )
        await _publish(d, event, t.document_key(tenant.id, kind.kind, ref))
        return FastJSONResponse({"emails": event.data["emails"]})

    return email


def hook_route(kind: FocusKind) -> Handler:
    """Deliver the note's current state to its hooks again (answers the hooks fired)."""

    async def refire_hook(request: Request) -> Response:
        d = deps(request)
        tenant = await authenticate(request, d)
        ref = request.path_params["ref"]
        doc = await d.documents.get(tenant.id, kind.kind, ref)
        if doc is None:
            raise FOCUS.not_found()
        fired = await d.hooks.matching(tenant.id, kind.kind, doc.cnpj_prestador)
        event = Event(
            type=kind.hook_type,
            source=SOURCE,
            data={"tenant": tenant.id, "ref": ref},
            subject=ref,
            tenant=tenant.id,
        )
        await _publish(d, event, t.document_key(tenant.id, kind.kind, ref))
        return FastJSONResponse([hook.public() for hook in fired])

    return refire_hook


async def _publish(d: IngressDeps, event: Event, key: bytes) -> None:
    try:
        await d.bus.publish(d.topics.nfse_commands, event, key)
    except BusUnavailable as exc:
        raise FOCUS.unavailable() from exc


def note_routes(kind: FocusKind, create: Handler, get: Handler) -> list[Route]:
    """A Focus NFS-e family's routes (`/v2/nfse`, `/v2/nfsen`): the same verbs and answers."""
    base = kind.api_path
    prefix = XML_PREFIXES[kind.kind]
    return [
        Route(base, create, methods=["POST"]),
        Route(base + "/{ref}", get, methods=["GET"]),
        Route(base + "/{ref}", cancel_route(kind), methods=["DELETE"]),
        Route(base + "/{ref}/email", email_route(kind), methods=["POST"]),
        Route(base + "/{ref}/hook", hook_route(kind), methods=["POST"]),
        Route(prefix + "{name}", xml_route(prefix), methods=["GET"]),
    ]


routes = note_routes(NFSE, create_nfse, get_nfse)


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
_STRING = {"type": "string"}

OPENAPI = Description(
    paths=note_paths(
        NFSE,
        tag="Focus NFS-e",
        noun="NFS-e",
        schema="Nfse",
        refire_id="refireHooks",
        xml_summary="XML da nota autorizada",
    ),
    schemas={
        "Nfse": embedded_schema("nfse", "Nfse"),
        "NfseAccepted": {
            "type": "object",
            "required": ["cnpj_prestador", "ref", "status"],
            "properties": {
                "cnpj_prestador": _STRING,
                "ref": _STRING,
                "status": {"const": "processando_autorizacao"},
            },
        },
        "NfseView": {
            "type": "object",
            "required": ["cnpj_prestador", "ref", "status"],
            "properties": {
                "id": {"type": "integer"},
                "cnpj_prestador": _STRING,
                "ref": _STRING,
                "status": {
                    "enum": [
                        "processando_autorizacao",
                        "autorizado",
                        "erro_autorizacao",
                        "cancelado",
                        "substituido",
                    ]
                },
                **{
                    name: _STRING
                    for name in (
                        "numero",
                        "codigo_verificacao",
                        "data_emissao",
                        "url",
                        "url_danfse",
                        "caminho_xml_nota_fiscal",
                        "caminho_xml_cancelamento",
                        "numero_rps",
                        "serie_rps",
                        "tipo_rps",
                    )
                },
                "erros": ERROS,
                "requisicao_nota_fiscal": {"type": "object"},
            },
        },
    },
)
