"""Focus NFe dialect, NFC-e (documents in Emites-Client's format, seed 002): synchronous for
clients like Focus's NFC-e. POST and DELETE publish the command and wait (bounded) for the
consumer's answer on the replies topic; past the bound, 202 with the note as it stands."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument, RefInUse
from notaflow.ingress.cancellation import cancel_and_wait
from notaflow.ingress.deps import deps
from notaflow.ingress.errors import FocusError, invalid, not_found, unavailable
from notaflow.ingress.focus_nfse import authenticate, focus_json, query_value
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import (
    AUTHORIZED,
    ERROR,
    NFCE_DANFE,
    NFCE_XML,
    PROCESSING,
    is_issued,
    nfce_blob,
)
from notaflow.nfce import normalize_nfce, omitted_notices, validate_motivo
from notaflow.nfse import validate_ref
from notaflow.store import ClaimRequest
from notaflow.tracing import outgoing_traceparent
from notaflow.views import nfce_view

KIND = "nfce"
SOURCE = "notaflow/ingress"


async def create_nfce(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    try:
        ref = validate_ref(query_value(request, "ref"))
    except InvalidDocument as exc:
        raise invalid(exc.message) from exc
    raw = await focus_json(request, d)
    try:
        document = normalize_nfce(raw)
    except InvalidDocument as exc:
        raise invalid(exc.message) from exc
    # The document published is normalised (no "" left): the notices travel beside it, so the
    # consumer keeps them with the note whichever route the command came by.
    avisos = omitted_notices(raw)
    notices = {"avisos": avisos} if avisos else {}
    cnpj = d.settings.emites_cnpj
    if not cnpj or cnpj not in tenant.cnpjs:
        raise FocusError(
            400, "empresa_nao_habilitada", "Emitente ainda não habilitado para emissão de NFC-e"
        )
    command_id = str(uuid.uuid4())
    event = Event(
        type=t.NFCE_CREATE,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, "nfce": document, **notices},
        subject=ref,
        id=command_id,
        tenant=tenant.id,
        traceparent=outgoing_traceparent(request.headers.get("traceparent", "")),
    )
    d.waiters.register(command_id)  # before publishing: SEFAZ may answer quickly
    try:
        await d.nfce_intake.submit(
            ClaimRequest(tenant.id, KIND, ref, cnpj, document, command_id, SOURCE),
            event,
            t.document_key(tenant.id, KIND, ref),
        )
    except RefInUse as exc:
        d.waiters.forget(command_id)
        if is_issued(exc.status):
            raise FocusError(422, "nfe_autorizada", "Nota fiscal já autorizada") from exc
        raise FocusError(422, "em_processamento", "Nota fiscal em processamento") from exc
    except BusUnavailable as exc:
        d.waiters.forget(command_id)
        raise unavailable() from exc
    outcome = await d.waiters.wait(command_id, d.settings.nfce_wait)
    if outcome is None or not isinstance(outcome.get("note"), dict):
        doc = await d.documents.get(tenant.id, KIND, ref)
        body = nfce_view(doc) if doc else {"ref": ref, "status": PROCESSING}
        return FastJSONResponse({**body, **notices}, status_code=202)
    note = outcome["note"]
    code = {AUTHORIZED: 201, ERROR: 422}.get(note.get("status"), 202)
    return FastJSONResponse({**note, **notices}, status_code=code)


async def get_nfce(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    doc = await d.documents.get(tenant.id, KIND, request.path_params["ref"])
    if doc is None:
        raise not_found()
    return FastJSONResponse({**nfce_view(doc), "id": doc.id})


async def cancel_nfce(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    ref = request.path_params["ref"]
    body = await focus_json(request, d, empty={})
    try:
        motivo = validate_motivo(body)
    except InvalidDocument as exc:
        raise invalid(exc.message) from exc
    return await cancel_and_wait(
        request,
        d,
        tenant,
        kind=KIND,
        ref=ref,
        event_type=t.NFCE_CANCEL,
        topic=d.topics.nfce_commands,
        data={"motivo": motivo},
        wait=d.settings.nfce_wait,
        view=nfce_view,
        cancelled_body=lambda doc: nfce_view(doc) if doc else {"status": "cancelado"},
    )


async def nfce_file(request: Request) -> Response:
    """The DANFE (PDF) or XML Emites-Client returned, kept by notaflow outside Kafka."""
    d = deps(request)
    tenant = await authenticate(request, d)
    doc = await d.documents.get(tenant.id, KIND, request.path_params["ref"])
    if doc is None:
        raise not_found()
    name = NFCE_DANFE if request.url.path.endswith("danfe.pdf") else NFCE_XML
    blob = await d.documents.get_blob(nfce_blob(doc.id, name))
    if blob is None:
        raise not_found()
    content_type, data = blob
    return Response(data, media_type=content_type)


routes = [
    Route("/v2/nfce", create_nfce, methods=["POST"]),
    Route("/v2/nfce/{ref}", get_nfce, methods=["GET"]),
    Route("/v2/nfce/{ref}", cancel_nfce, methods=["DELETE"]),
    Route("/v2/nfce/{ref}/danfe.pdf", nfce_file, methods=["GET"]),
    Route("/v2/nfce/{ref}/xml", nfce_file, methods=["GET"]),
]
