"""Focus NFe dialect, NFS-e (seed 001): POST /v2/nfse?ref=, the ingress's hot route, and the
create route of every NFS-e family (`/v2/nfsen` too); the note routes they share (consult,
cancel, e-mail, hooks, XML) are in `ingress.focus_notes`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response

from notaflow.accounts import Provider
from notaflow.focus_kinds import NFSE, FocusKind
from notaflow.ingress.account_check import refuse_disabled
from notaflow.ingress.body import read_body
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import FOCUS
from notaflow.ingress.focus_notes import Handler, note_paths, note_routes
from notaflow.ingress.focus_request import (
    authenticate_header,
    normalized,
    not_enabled,
    read_ref,
    submit,
)
from notaflow.ingress.openapi_parts import ERROS, Description, embedded_schema
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import PROCESSING


def create_route(kind: FocusKind) -> Handler:
    """POST of an NFS-e family through Starlette (`accept_note` does the work)."""

    async def create(request: Request) -> Response:
        headers = request.headers
        cnpj, ref = await accept_note(
            kind,
            deps(request),
            authorization=headers.get("authorization", ""),
            query_string=request.scope.get("query_string", b""),
            content_type=headers.get("content-type", ""),
            read=lambda limit: read_body(request, limit),
            trace=headers,
        )
        return FastJSONResponse(accepted_body(cnpj, ref), status_code=202)

    return create


def accepted_body(cnpj: str, ref: str) -> dict[str, str]:
    return {"cnpj_prestador": cnpj, "ref": ref, "status": PROCESSING}


async def accept_note(
    kind: FocusKind,
    d: IngressDeps,
    authorization: str,
    query_string: bytes,
    content_type: str,
    read: Callable[[int], Awaitable[bytes]],
    trace: Mapping[str, str],
) -> tuple[str, str]:
    """POST of an NFS-e family without Starlette's Request (`POST /v2/nfse`, the ingress's hot
    route, also runs as a raw ASGI handler, see `ingress.app`): the prestador's CNPJ and the
    ref, once the ref is claimed and the command acknowledged by Kafka; FocusError for every
    refusal."""
    tenant = await authenticate_header(authorization, d)
    ref = read_ref(query_string)
    raw = await FOCUS.parse(content_type, read, d.settings.max_body_bytes)
    document = normalized(kind.normalize, raw)
    cnpj = kind.prestador(document)
    if cnpj not in tenant.cnpjs:
        raise not_enabled("NFSe")
    await refuse_disabled(d, tenant.id, cnpj, Provider.FOCUS)
    await submit(
        d.intake,
        tenant,
        kind=kind.kind,
        ref=ref,
        cnpj=cnpj,
        document=document,
        event_type=kind.emit_type,
        data={kind.kind: document},
        trace=trace,
    )
    return cnpj, ref


create_nfse = create_route(NFSE)
routes = note_routes(NFSE, create_nfse)

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
