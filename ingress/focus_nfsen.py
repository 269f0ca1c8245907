"""Focus NFe dialect, NFS-e Nacional (`/v2/nfsen`): the same lifecycle and answers as `/v2/nfse`
(`ingress.focus_nfse`, whose helpers it shares) for the flat national document, kind `nfsen`,
its own command types on the NFS-e command topic."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingress.body import BodyNotJson, BodyTooLarge, check_json_type, parse_json, read_body
from ingress.cancellation import cancel_and_wait
from ingress.deps import deps
from ingress.errors import FocusError, invalid, not_found, unavailable
from ingress.focus_nfse import (
    _body_error,
    accepted_body,
    authenticate,
    completa,
    focus_json,
    query_value,
)
from ingress.responses import FastJSONResponse
from notaflow import topics as t
from notaflow.emails import MAX_PER_REQUEST, valid_email
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument, RefInUse
from notaflow.focus_kinds import NFSEN
from notaflow.nfse import validate_justificativa, validate_ref
from notaflow.store import ClaimRequest
from notaflow.store.documents import AUTHORIZED, CANCELLED
from notaflow.tracing import outgoing_traceparent
from notaflow.views import nfse_view

KIND = NFSEN.kind
SOURCE = "notaflow/ingress"


async def create_nfsen(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    try:
        ref = validate_ref(query_value(request, "ref"))
    except InvalidDocument as exc:
        raise invalid(exc.message) from exc
    try:
        check_json_type(request.headers.get("content-type", ""))
        raw = parse_json(await read_body(request, d.settings.max_body_bytes))
    except (BodyTooLarge, BodyNotJson) as exc:
        raise _body_error(exc, d) from exc
    try:
        document = NFSEN.normalize(raw)
    except InvalidDocument as exc:
        raise invalid(exc.message) from exc
    cnpj = NFSEN.prestador(document)
    if cnpj not in tenant.cnpjs:
        raise FocusError(
            400, "empresa_nao_habilitada", "Emitente ainda não habilitado para emissão de NFSe"
        )
    command_id = str(uuid.uuid4())
    event = Event(
        type=NFSEN.emit_type,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, KIND: document},
        subject=ref,
        id=command_id,
        tenant=tenant.id,
        traceparent=outgoing_traceparent(request.headers.get("traceparent", "")),
    )
    claim = ClaimRequest(tenant.id, KIND, ref, cnpj, document, command_id, SOURCE)
    try:
        await d.intake.submit(claim, event, t.document_key(tenant.id, KIND, ref))
    except RefInUse as exc:
        if exc.status in (AUTHORIZED, CANCELLED):
            raise FocusError(422, "nfe_autorizada", "Nota fiscal já autorizada") from exc
        raise FocusError(422, "em_processamento", "Nota fiscal em processamento") from exc
    except BusUnavailable as exc:
        raise unavailable() from exc
    return FastJSONResponse(accepted_body(cnpj, ref), status_code=202)


async def get_nfsen(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    doc = await d.documents.get(tenant.id, KIND, request.path_params["ref"])
    if doc is None:
        raise not_found()
    view = {**nfse_view(doc), "id": doc.id}
    if completa(request):
        view["requisicao_nota_fiscal"] = doc.payload
    return FastJSONResponse(view)


async def cancel_nfsen(request: Request) -> Response:
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
        kind=KIND,
        ref=request.path_params["ref"],
        event_type=NFSEN.cancel_type,
        topic=d.topics.nfse_commands,
        data={"justificativa": justificativa},
        wait=d.settings.cancel_wait,
        view=nfse_view,
        cancelled_body=lambda _doc: {"status": "cancelado"},
    )


async def email_nfsen(request: Request) -> Response:
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
    doc = await d.documents.get(tenant.id, KIND, ref)
    if doc is None:
        raise not_found()
    if doc.status not in (AUTHORIZED, CANCELLED):
        raise FocusError(400, "nfe_nao_autorizada", "Nota fiscal não autorizada")
    event = Event(
        type=NFSEN.email_type,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, "emails": list(dict.fromkeys(emails))},
        subject=ref,
        tenant=tenant.id,
        traceparent=outgoing_traceparent(request.headers.get("traceparent", "")),
    )
    try:
        await d.bus.publish(d.topics.nfse_commands, event, t.document_key(tenant.id, KIND, ref))
    except BusUnavailable as exc:
        raise unavailable() from exc
    return FastJSONResponse({"emails": event.data["emails"]})


async def refire_hook(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    ref = request.path_params["ref"]
    doc = await d.documents.get(tenant.id, KIND, ref)
    if doc is None:
        raise not_found()
    fired = await d.hooks.matching(tenant.id, KIND, doc.cnpj_prestador)
    event = Event(
        type=NFSEN.hook_type,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref},
        subject=ref,
        tenant=tenant.id,
    )
    try:
        await d.bus.publish(d.topics.nfse_commands, event, t.document_key(tenant.id, KIND, ref))
    except BusUnavailable as exc:
        raise unavailable() from exc
    return FastJSONResponse([hook.public() for hook in fired])


XML_DIR = "/notas_fiscais_servico_nacional/"


async def nfsen_xml(request: Request) -> Response:
    """The XML (and the cancellation XML) of a national note, kept by notaflow at the path the
    provider gave; like at Focus, the unguessable path is the credential."""
    blob = await deps(request).documents.get_blob(XML_DIR + request.path_params["name"])
    if blob is None:
        raise not_found()
    content_type, data = blob
    return Response(data, media_type=content_type)


routes = [
    Route("/v2/nfsen", create_nfsen, methods=["POST"]),
    Route("/v2/nfsen/{ref}", get_nfsen, methods=["GET"]),
    Route("/v2/nfsen/{ref}", cancel_nfsen, methods=["DELETE"]),
    Route("/v2/nfsen/{ref}/email", email_nfsen, methods=["POST"]),
    Route("/v2/nfsen/{ref}/hook", refire_hook, methods=["POST"]),
    Route(XML_DIR + "{name}", nfsen_xml, methods=["GET"]),
]
