"""Focus NFe dialect, NFS-e (seed 001): POST /v2/nfse?ref=, GET /v2/nfse/REF, XML downloads."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.emails import MAX_PER_REQUEST, valid_email
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument, RefInUse
from notaflow.focus_kinds import NFSE, FocusKind
from notaflow.ingress.auth import basic_user
from notaflow.ingress.body import (
    BodyNotJson,
    BodyTooLarge,
    check_json_type,
    parse_json,
    read_body,
    read_json,
)
from notaflow.ingress.cancellation import cancel_and_wait
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.errors import FocusError, invalid, not_found, unavailable
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import PROCESSING, XML_PREFIXES, can_email, is_issued
from notaflow.nfse import normalize_nfse, validate_justificativa, validate_ref
from notaflow.store import ClaimRequest, Tenant
from notaflow.tracing import outgoing_traceparent
from notaflow.views import nfse_view

KIND = "nfse"
SOURCE = "notaflow/ingress"


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
        raise FocusError(
            401,
            "nao_autorizado",
            "Informe o token de acesso (HTTP Basic: token como usuário, senha vazia)",
            headers={"WWW-Authenticate": 'Basic realm="notaflow"'},
        )
    tenant = await d.tenant_cache.lookup(token)
    if tenant is None:
        # The same answer for an unknown and a revoked token: nothing says which tenants exist.
        raise FocusError(403, "permissao_negada", "Token inválido ou sem permissão de acesso")
    return tenant


async def focus_json(request: Request, d: IngressDeps, empty: object = None) -> object:
    try:
        return await read_json(request, d.settings.max_body_bytes, empty)
    except (BodyTooLarge, BodyNotJson) as exc:
        raise _body_error(exc, d) from exc


def _body_error(exc: BodyTooLarge | BodyNotJson, d: IngressDeps) -> FocusError:
    if isinstance(exc, BodyTooLarge):
        return FocusError(
            413,
            "requisicao_invalida",
            f"Corpo da requisição maior que o limite de {d.settings.max_body_bytes} bytes",
        )
    if exc.unsupported_type:
        return FocusError(415, "requisicao_invalida", "Envie o corpo em JSON")
    return invalid("O corpo da requisição não é um JSON válido")


async def create_nfse(request: Request) -> Response:
    headers = request.headers
    cnpj, ref = await accept_nfse(
        deps(request),
        authorization=headers.get("authorization", ""),
        query_string=request.scope.get("query_string", b""),
        content_type=headers.get("content-type", ""),
        read=lambda limit: read_body(request, limit),
        traceparent=headers.get("traceparent", ""),
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
    traceparent: str,
) -> tuple[str, str]:
    """POST /v2/nfse without Starlette's Request (the ingress's hot route also runs as a raw
    ASGI handler, see `ingress.app`): the prestador's CNPJ and the ref, once the ref is claimed
    and the command acknowledged by Kafka; FocusError for every refusal."""
    tenant = await authenticate_header(authorization, d)
    try:
        ref = validate_ref(query_string_value(query_string, "ref"))
    except InvalidDocument as exc:
        raise invalid(exc.message) from exc
    try:
        check_json_type(content_type)
        raw = parse_json(await read(d.settings.max_body_bytes))
    except (BodyTooLarge, BodyNotJson) as exc:
        raise _body_error(exc, d) from exc
    try:
        document = normalize_nfse(raw)
    except InvalidDocument as exc:
        raise invalid(exc.message) from exc
    cnpj = document["prestador"]["cnpj"]
    if cnpj not in tenant.cnpjs:
        raise FocusError(
            400, "empresa_nao_habilitada", "Emitente ainda não habilitado para emissão de NFSe"
        )
    command_id = str(uuid.uuid4())
    event = Event(
        type=t.NFSE_EMIT,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, "nfse": document},
        subject=ref,
        id=command_id,
        tenant=tenant.id,
        traceparent=outgoing_traceparent(traceparent),
    )
    claim = ClaimRequest(tenant.id, KIND, ref, cnpj, document, command_id, SOURCE)
    try:
        await d.intake.submit(claim, event, t.document_key(tenant.id, KIND, ref))
    except RefInUse as exc:
        if is_issued(exc.status):
            raise FocusError(422, "nfe_autorizada", "Nota fiscal já autorizada") from exc
        raise FocusError(422, "em_processamento", "Nota fiscal em processamento") from exc
    except BusUnavailable as exc:
        raise unavailable() from exc
    return cnpj, ref


async def get_nfse(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    doc = await d.documents.get(tenant.id, KIND, request.path_params["ref"])
    if doc is None:
        raise not_found()
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
        raise invalid('Parâmetro "completa" inválido: use 1, 0, true ou false')
    return full


Handler = Callable[[Request], Awaitable[Response]]


def xml_route(prefix: str) -> Handler:
    """The XML (and the cancellation XML) of a note, under the name notaflow gave it below
    `prefix` (`notaflow.lifecycle.xml_path`). Like Focus, the unguessable path is the credential."""

    async def xml(request: Request) -> Response:
        blob = await deps(request).documents.get_blob(prefix + request.path_params["name"])
        if blob is None:
            raise not_found()
        content_type, data = blob
        return Response(data, media_type=content_type)

    return xml


def cancel_route(kind: FocusKind) -> Handler:
    """Synchronous, as at Focus: publish the cancel command, wait (bounded) for the
    cancellation consumer's answer; past the bound, 202 with the note as it stands."""

    async def cancel(request: Request) -> Response:
        d = deps(request)
        tenant = await authenticate(request, d)
        body = await focus_json(request, d)
        try:
            justificativa = validate_justificativa(body)
        except InvalidDocument as exc:
            raise invalid(exc.message) from exc
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
        body = await focus_json(request, d)
        emails = body.get("emails") if isinstance(body, dict) else None
        if emails is None:
            raise invalid('Parâmetro "emails" não informado')
        if not isinstance(emails, list) or not emails:
            raise invalid('Parâmetro "emails" deve ser uma lista de e-mails')
        if len(emails) > MAX_PER_REQUEST:
            raise invalid(f'Parâmetro "emails" aceita no máximo {MAX_PER_REQUEST} e-mails por vez')
        for address in emails:
            if not isinstance(address, str) or not valid_email(address):
                raise invalid(f"E-mail inválido: {address}")
        doc = await d.documents.get(tenant.id, kind.kind, ref)
        if doc is None:
            raise not_found()
        if not can_email(doc.status):
            raise FocusError(400, "nfe_nao_autorizada", "Nota fiscal não autorizada")
        event = Event(
            type=kind.email_type,
            source=SOURCE,
            data={"tenant": tenant.id, "ref": ref, "emails": list(dict.fromkeys(emails))},
            subject=ref,
            tenant=tenant.id,
            traceparent=outgoing_traceparent(request.headers.get("traceparent", "")),
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
            raise not_found()
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
        raise unavailable() from exc


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
