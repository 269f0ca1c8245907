"""Focus NFe dialect, NFS-e Nacional (`/v2/nfsen`): the same lifecycle and answers as `/v2/nfse`
(`ingress.focus_nfse`, whose helpers it shares) for the flat national document, kind `nfsen`,
its own command types on the NFS-e command topic."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import Response

from notaflow import topics as t
from notaflow.accounts import Provider
from notaflow.envelope import Event
from notaflow.errors import BusUnavailable, InvalidDocument, RefInUse
from notaflow.focus_kinds import NFSEN
from notaflow.ingress.account_check import refuse_disabled
from notaflow.ingress.deps import deps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.focus_nfse import (
    accepted_body,
    authenticate,
    completa,
    note_paths,
    note_routes,
    query_value,
)
from notaflow.ingress.openapi_parts import Description, embedded_schema
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import is_issued
from notaflow.nfse import validate_ref
from notaflow.store import ClaimRequest
from notaflow.tracing import trace_fields
from notaflow.views import nfse_view

KIND = NFSEN.kind
SOURCE = t.SOURCE_INGRESS


async def create_nfsen(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    try:
        ref = validate_ref(query_value(request, "ref"))
    except InvalidDocument as exc:
        raise FOCUS.invalid(exc.message) from exc
    raw = await FOCUS.json(request, d.settings.max_body_bytes)
    try:
        document = NFSEN.normalize(raw)
    except InvalidDocument as exc:
        raise FOCUS.invalid(exc.message) from exc
    cnpj = NFSEN.prestador(document)
    if cnpj not in tenant.cnpjs:
        raise FocusError(
            400, "empresa_nao_habilitada", "Emitente ainda não habilitado para emissão de NFSe"
        )
    await refuse_disabled(d, tenant.id, cnpj, Provider.FOCUS)
    command_id = str(uuid.uuid4())
    event = Event(
        type=NFSEN.emit_type,
        source=SOURCE,
        data={"tenant": tenant.id, "ref": ref, KIND: document},
        subject=ref,
        id=command_id,
        tenant=tenant.id,
        **trace_fields(request.headers),
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
    return FastJSONResponse(accepted_body(cnpj, ref), status_code=202)


async def get_nfsen(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    doc = await d.documents.get(tenant.id, KIND, request.path_params["ref"])
    if doc is None:
        raise FOCUS.not_found()
    view = {**nfse_view(doc), "id": doc.id}
    if completa(request):
        view["requisicao_nota_fiscal"] = doc.payload
    return FastJSONResponse(view)


routes = note_routes(NFSEN, create_nfsen, get_nfsen)

OPENAPI = Description(
    paths=note_paths(
        NFSEN,
        tag="Focus NFS-e Nacional",
        noun="NFS-e Nacional",
        schema="Nfsen",
        refire_id="refireNfsenHooks",
        xml_summary="XML da NFS-e Nacional autorizada ou do seu cancelamento",
    ),
    schemas={"Nfsen": embedded_schema("nfsen", "Nfsen")},
)
