"""Focus NFe dialect, NFC-e (documents in Emites-Client's format, seed 002): synchronous for
clients like Focus's NFC-e. POST and DELETE publish the command and wait (bounded) for the
consumer's answer on the replies topic; past the bound, 202 with the note as it stands."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.accounts import Provider
from notaflow.ingress.account_check import refuse_disabled
from notaflow.ingress.cancellation import cancel_route
from notaflow.ingress.deps import deps
from notaflow.ingress.dialects import FOCUS
from notaflow.ingress.focus_request import (
    authenticate,
    normalized,
    not_enabled,
    note_or_404,
    read_ref,
    submit,
)
from notaflow.ingress.openapi_parts import (
    CREATE_ERRORS,
    ERROS,
    FOCUS_AUTH,
    NOTE_BODY_ERRORS,
    REF_PARAM,
    SCHEMAS,
    Description,
    embedded_schema,
    focus_error,
    focus_errors,
    json_response,
)
from notaflow.ingress.responses import FastJSONResponse
from notaflow.lifecycle import (
    AUTHORIZED,
    ERROR,
    NFCE_DANFE,
    NFCE_XML,
    PROCESSING,
    nfce_blob,
)
from notaflow.nfce import normalize_nfce, omitted_notices, validate_motivo
from notaflow.views import nfce_view

KIND = "nfce"
SOURCE = t.SOURCE_INGRESS


async def create_nfce(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    ref = read_ref(request.scope.get("query_string", b""))
    raw = await FOCUS.json(request, d.settings.max_body_bytes)
    # Which shop issues it (issue 15): Focus's `cnpj_emitente`, taken out of the document
    # (Emites-Client issues for the CNPJ it is set up with); absent: NOTAFLOW_EMITES_CNPJ.
    emitente = raw.pop("cnpj_emitente", None) if isinstance(raw, dict) else None
    if emitente is not None and not (
        isinstance(emitente, str) and len(emitente) == 14 and emitente.isdigit()
    ):
        raise FOCUS.invalid("cnpj_emitente deve ter 14 dígitos")
    document = normalized(normalize_nfce, raw)
    # The document published is normalised (no "" left): the notices travel beside it, so the
    # consumer keeps them with the note whichever route the command came by.
    avisos = omitted_notices(raw)
    notices = {"avisos": avisos} if avisos else {}
    cnpj = emitente or d.settings.emites_cnpj
    # A shop is served by its Emites account, or by the global endpoint if it is that one's.
    if not cnpj or cnpj not in tenant.cnpjs:
        raise not_enabled("NFC-e")
    account = await refuse_disabled(d, tenant.id, cnpj, Provider.EMITES)  # one lookup
    if cnpj != d.settings.emites_cnpj and account is None:
        raise not_enabled("NFC-e")
    command_id = await submit(
        d.nfce_intake,
        tenant,
        kind=KIND,
        ref=ref,
        cnpj=cnpj,
        document=document,
        event_type=t.NFCE_CREATE,
        data={"nfce": document, "cnpj": cnpj, **notices},
        trace=request.headers,
        waiters=d.waiters,  # SEFAZ may answer quickly: registered before publishing
    )
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
    doc = await note_or_404(d, tenant, KIND, request.path_params["ref"])
    return FastJSONResponse({**nfce_view(doc), "id": doc.id})


cancel_nfce = cancel_route(
    KIND,
    t.NFCE_CANCEL,
    reason=("motivo", validate_motivo),
    empty_body={},
    topic=lambda topics: topics.nfce_commands,
    wait=lambda settings: settings.nfce_wait,
    view=nfce_view,
    cancelled_body=lambda doc: nfce_view(doc) if doc else {"status": "cancelado"},
)


async def nfce_file(request: Request) -> Response:
    """The DANFE (PDF) or XML Emites-Client returned, kept by notaflow outside Kafka."""
    d = deps(request)
    tenant = await authenticate(request, d)
    doc = await note_or_404(d, tenant, KIND, request.path_params["ref"])
    name = NFCE_DANFE if request.url.path.endswith("danfe.pdf") else NFCE_XML
    blob = await d.documents.get_blob(nfce_blob(doc.id, name))
    if blob is None:
        raise FOCUS.not_found()
    content_type, data = blob
    return Response(data, media_type=content_type)


routes = [
    Route("/v2/nfce", create_nfce, methods=["POST"]),
    Route("/v2/nfce/{ref}", get_nfce, methods=["GET"]),
    Route("/v2/nfce/{ref}", cancel_nfce, methods=["DELETE"]),
    Route("/v2/nfce/{ref}/danfe.pdf", nfce_file, methods=["GET"]),
    Route("/v2/nfce/{ref}/xml", nfce_file, methods=["GET"]),
]

_TAGS, _VIEW = ["Focus NFC-e"], {"$ref": f"{SCHEMAS}NfceView"}
_STRING = _FILE = {"type": "string"}
OPENAPI = Description(
    paths={
        "/v2/nfce": {
            "post": {
                "tags": _TAGS,
                "operationId": "createNfce",
                "summary": "Emitir uma NFC-e (síncrono)",
                "description": "Documento no formato do Emites-Client; espera a SEFAZ até "
                "NOTAFLOW_NFCE_WAIT: 201 autorizada, 422 rejeitada, 202 ainda em processamento.",
                "security": FOCUS_AUTH,
                "parameters": [{**REF_PARAM, "in": "query"}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"{SCHEMAS}Nfce"}}},
                },
                "responses": {
                    "201": json_response(_VIEW, "Autorizada"),
                    "202": json_response(_VIEW, "Ainda em processamento: a nota como está"),
                    **focus_errors(
                        *CREATE_ERRORS,
                        s400=["requisicao_invalida", "empresa_nao_habilitada"],
                    ),
                    "422": {
                        "description": "Rejeitada pela SEFAZ (a nota, com `erros`), ou ref já "
                        "usada (`nfe_autorizada`, `em_processamento`)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        _VIEW,
                                        focus_error(422)["content"]["application/json"]["schema"],
                                    ]
                                }
                            }
                        },
                    },
                },
            }
        },
        "/v2/nfce/{ref}": {
            "parameters": [REF_PARAM],
            "get": {
                "tags": _TAGS,
                "operationId": "getNfce",
                "summary": "Consultar uma NFC-e",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": json_response(_VIEW, "A nota"),
                    **focus_errors(401, 403, 404),
                },
            },
            "delete": {
                "tags": _TAGS,
                "operationId": "cancelNfce",
                "summary": "Cancelar uma NFC-e",
                "security": FOCUS_AUTH,
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "justificativa": {
                                        "type": ["string", "null"],
                                        "minLength": 15,
                                        "maxLength": 255,
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": json_response(_VIEW, "Cancelada, ou `erro_cancelamento` com `erros`"),
                    "202": json_response(_VIEW, "Ainda sem resposta: a nota como está"),
                    **focus_errors(
                        *NOTE_BODY_ERRORS,
                        s400=["requisicao_invalida", "nfe_cancelada", "nfe_nao_autorizada"],
                    ),
                },
            },
        },
        "/v2/nfce/{ref}/danfe.pdf": {
            "parameters": [REF_PARAM],
            "get": {
                "tags": _TAGS,
                "operationId": "getNfceDanfe",
                "summary": "DANFE da NFC-e (PDF)",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": {
                        "description": "O PDF",
                        "content": {"application/pdf": {"schema": _FILE}},
                    },
                    **focus_errors(401, 403, 404),
                },
            },
        },
        "/v2/nfce/{ref}/xml": {
            "parameters": [REF_PARAM],
            "get": {
                "tags": _TAGS,
                "operationId": "getNfceXml",
                "summary": "XML da NFC-e",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": {
                        "description": "O XML",
                        "content": {"application/xml": {"schema": _FILE}},
                    },
                    **focus_errors(401, 403, 404),
                },
            },
        },
    },
    schemas={
        "Nfce": embedded_schema("nfce", "Nfce"),
        "NfceView": {
            "type": "object",
            "required": ["ref", "status"],
            "properties": {
                "id": {"type": "integer"},
                "cnpj_emitente": _STRING,
                "ref": _STRING,
                "status": _STRING,
                **{
                    name: {"type": ["string", "integer", "null"]}
                    for name in (
                        "numero",
                        "serie",
                        "chave_nfe",
                        "protocolo",
                        "data_emissao",
                        "codigo_verificacao",
                        "caminho_xml_nota_fiscal",
                        "caminho_danfe",
                        "caminho_xml_cancelamento",
                        "status_sefaz",
                        "mensagem_sefaz",
                    )
                },
                "erros": ERROS,
                # POST only: each "" the client sent that did not go to Emites-Client.
                "avisos": {"type": "array", "items": _STRING},
            },
        },
    },
)
