"""What the ingress tells operators and integrators about itself: `/metrics`, request metrics
labelled by route template, and the API description (`/openapi.json`, `/docs`).

`MetricsMiddleware` is pure ASGI (no BaseHTTPMiddleware: it would buffer and cost a task per
request). It labels by the *template* of the route Starlette's router matched, which the router
records in `scope["route"]`, so `/v2/nfse/pedido123` counts as `/v2/nfse/{ref}` and a scan of
random paths adds one series, `unmatched`, not thousands.

The OpenAPI 3.1 document is built by a pure function from the routes of every dialect; the
request bodies that have a JSON Schema in `schemas/` reference it (2020-12 is OpenAPI 3.1's own
dialect), and every error answer is described in its dialect's shape. `/docs` renders the same
document as plain HTML: no JavaScript, nothing fetched from the internet.
"""

from __future__ import annotations

import copy
import html
import json
import time
from functools import cache
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from notaflow import schemas
from notaflow.ingress import admin, hubsoft_financeiro, wuro
from notaflow.metrics import Metrics, render

__all__ = [
    "UNMATCHED",
    "MetricsMiddleware",
    "docs_html",
    "metrics_route",
    "openapi_document",
    "openapi_routes",
    "route_template",
]

UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route the router matched (also on 405), or `unmatched`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str) or not path:
        return UNMATCHED
    # Inside a Mount the matched route's path is relative; the mount prefix is in root_path.
    app_root = scope.get("app_root_path", "")
    root = scope.get("root_path", "")
    prefix = root[len(app_root) :] if root.startswith(app_root) else ""
    return prefix + path


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before the response started is answered 500 upstream
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            route, method = route_template(scope), scope["method"]
            self.metrics.http_requests_total.labels(route, method, str(status)).inc()
            self.metrics.http_request_duration_seconds.labels(route, method).observe(
                time.perf_counter() - start
            )

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # the answer is out; background tasks after it are not its latency

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            record()


def metrics_route(registry: CollectorRegistry, path: str = "/metrics") -> Route:
    async def metrics_endpoint(request: Request) -> Response:
        data, content_type = render(registry)
        return Response(data, headers={"Content-Type": content_type})

    return Route(path, metrics_endpoint, methods=["GET"], name="metrics")


def openapi_routes() -> list[BaseRoute]:
    """`GET /openapi.json` and `GET /docs`."""

    async def openapi_json(request: Request) -> Response:
        return Response(_openapi_bytes(), media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_html())

    return [
        Route("/openapi.json", openapi_json, methods=["GET"], name="openapi"),
        Route("/docs", docs, methods=["GET"], name="docs"),
    ]


# --- the document ----------------------------------------------------------------------------

FOCUS_ERROR = {"$ref": "#/components/schemas/FocusError"}
HUBSOFT_ERROR = {"$ref": "#/components/schemas/HubsoftError"}
FOCUS_AUTH: list[dict[str, list[str]]] = [{"focusBasic": []}]

# Every `codigo` the Focus dialect answers, by status (ingress.errors, ingress.app, the routes).
_FOCUS_CODES: dict[int, tuple[str, list[str]]] = {
    400: ("Requisição inválida", ["requisicao_invalida"]),
    401: ("Sem credenciais", ["nao_autorizado"]),
    403: (
        "Token desconhecido ou revogado (mesma resposta); conta do emitente desabilitada",
        ["permissao_negada", "conta_desabilitada"],
    ),
    404: ("Não encontrado (também a nota de outro tenant)", ["nao_encontrado"]),
    405: ("Método não permitido nesta rota", ["metodo_nao_permitido"]),
    413: ("Corpo maior que NOTAFLOW_MAX_BODY_BYTES", ["requisicao_invalida"]),
    415: ("Corpo XML ou multipart: envie JSON", ["requisicao_invalida"]),
    422: (
        "Ref já autorizada/cancelada ou em processamento",
        ["nfe_autorizada", "em_processamento"],
    ),
    500: ("Erro interno", ["erro_interno"]),
    503: (
        "Kafka ou o banco de dados indisponível; tente de novo (com a mesma ref)",
        ["servico_indisponivel"],
    ),
}


def _focus_error(status: int, codes: list[str] | None = None, description: str = "") -> Any:
    default_description, default_codes = _FOCUS_CODES[status]
    codes = codes or default_codes
    schema: dict[str, Any] = {
        "allOf": [FOCUS_ERROR],
        "properties": {"codigo": {"enum": codes}},
    }
    response: dict[str, Any] = {
        "description": f"{description or default_description} (`{'`, `'.join(codes)}`)",
        "content": {"application/json": {"schema": schema}},
    }
    if status == 503:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def _focus_errors(*statuses: int, **overrides: list[str]) -> dict[str, Any]:
    """Error responses of a Focus route: the given statuses plus the ones every route has
    (405; 500; 503 when the database is out of reach)."""
    out: dict[str, Any] = {}
    for status in sorted({*statuses, 405, 500, 503}):
        out[str(status)] = _focus_error(status, overrides.get(f"s{status}"))
    return out


def _hubsoft_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": HUBSOFT_ERROR}}}


def _json(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _embedded_schema(name: str, component: str) -> dict[str, Any]:
    """`schemas.load(name)` made a component: its `#/$defs/…` references point at the component
    (a `$ref` inside the OpenAPI document resolves against the document, not the schema file),
    and `$schema`/`$id` go, since 2020-12 is already the document's dialect."""
    schema = schemas.load(name)
    schema.pop("$schema", None)
    schema.pop("$id", None)
    base = f"#/components/schemas/{component}"

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    base + v[1:]
                    if k == "$ref" and isinstance(v, str) and v.startswith("#/")
                    else fix(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    out: dict[str, Any] = fix(schema)
    return out


REF_PARAM = {
    "name": "ref",
    "in": "path",
    "required": True,
    "description": "A referência do cliente: letras e dígitos, até 50.",
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,50}$"},
}
HOOK_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "O id do gatilho.",
    "schema": {"type": "string"},
}


def _components() -> dict[str, Any]:
    string = {"type": "string"}
    return {
        "securitySchemes": {
            "focusBasic": {
                "type": "http",
                "scheme": "basic",
                "description": "Dialeto Focus NFe: o token como usuário, senha vazia "
                '(`curl -u "TOKEN:"`).',
            },
            **wuro.OPENAPI_SECURITY,
            **admin.OPENAPI_SECURITY,
            "hubsoftBearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "Dialeto HubSoft: `Authorization: Bearer <token do tenant>`.",
            },
            "focusWebhookKey": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "O valor estático registrado na Focus para o hook "
                "(NOTAFLOW_FOCUS_WEBHOOK_SECRET), no cabeçalho NOTAFLOW_FOCUS_WEBHOOK_HEADER "
                "(Authorization por padrão); comparado em tempo constante.",
            },
        },
        "schemas": {
            "Nfse": _embedded_schema("nfse", "Nfse"),
            "Nfsen": _embedded_schema("nfsen", "Nfsen"),
            "FocusCallback": _embedded_schema("focus_callback", "FocusCallback"),
            "Nfce": _embedded_schema("nfce", "Nfce"),
            "NfceView": {
                "type": "object",
                "required": ["ref", "status"],
                "properties": {
                    "id": {"type": "integer"},
                    "cnpj_emitente": string,
                    "ref": string,
                    "status": string,
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
                    "erros": {"type": "array", "items": {"$ref": "#/components/schemas/Erro"}},
                    # POST only: each "" the client sent that did not go to Emites-Client.
                    "avisos": {"type": "array", "items": string},
                },
            },
            "FocusError": {
                "type": "object",
                "required": ["codigo", "mensagem"],
                "properties": {
                    "codigo": string,
                    "mensagem": string,
                    "erros": {"type": "array", "items": {"$ref": "#/components/schemas/Erro"}},
                },
            },
            "Erro": {
                "type": "object",
                "properties": {"codigo": string, "mensagem": string, "correcao": string},
            },
            "HubsoftError": {
                "type": "object",
                "required": ["status", "msg"],
                "properties": {"status": {"const": "error"}, "msg": string},
            },
            "NfseAccepted": {
                "type": "object",
                "required": ["cnpj_prestador", "ref", "status"],
                "properties": {
                    "cnpj_prestador": string,
                    "ref": string,
                    "status": {"const": "processando_autorizacao"},
                },
            },
            "NfseView": {
                "type": "object",
                "required": ["cnpj_prestador", "ref", "status"],
                "properties": {
                    "id": {"type": "integer"},
                    "cnpj_prestador": string,
                    "ref": string,
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
                        name: string
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
                    "erros": {"type": "array", "items": {"$ref": "#/components/schemas/Erro"}},
                    "requisicao_nota_fiscal": {"type": "object"},
                },
            },
            "Hook": {
                "type": "object",
                "required": ["id", "url", "event"],
                "properties": {
                    "id": string,
                    "cnpj": {"type": ["string", "null"]},
                    "cpf": string,
                    "url": {"type": "string", "format": "uri"},
                    "authorization": {"type": ["string", "null"]},
                    "authorization_header": {"type": ["string", "null"]},
                    "event": string,
                    "signing_secret": {
                        "type": "string",
                        "description": "Segredo das assinaturas Standard Webhooks.",
                    },
                    "deleted": {"type": "boolean"},
                    "disabled": {
                        "type": "boolean",
                        "description": "Desativado por falhar a maioria das entregas por 7 dias "
                        "(como na Focus): não dispara mais; crie outro para reativar.",
                    },
                },
            },
            "HubsoftEmailSent": {
                "type": "object",
                "required": ["status", "msg", "emails_enviados"],
                "properties": {
                    "status": {"const": "success"},
                    "msg": string,
                    "emails_enviados": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "host": string,
                                "email_origem": string,
                                "email_destino": string,
                                "tipo_envio": string,
                                "tipo_documento": string,
                                "data_envio": string,
                                "enviado": {"type": "boolean"},
                                "mensagem_erro": {"type": ["string", "null"]},
                                "id_email_enviado": {},
                                "data_envio_br": string,
                                "data_envio_timestamp": {"type": "integer"},
                            },
                        },
                    },
                },
            },
        },
    }


def _paths() -> dict[str, Any]:
    hook_body = {
        "type": "object",
        "required": ["event", "url"],
        "properties": {
            "event": {
                "enum": [
                    "nfse",
                    "nfsen",
                    "nfe",
                    "nfce",
                    "nfce_contingencia",
                    "inutilizacao",
                    "cte",
                    "mdfe",
                ]
            },
            "url": {"type": "string", "format": "uri", "maxLength": 2000},
            "cnpj": {"type": "string", "maxLength": 18},
            "cpf": {"type": "string", "maxLength": 14},
            "authorization": {"type": "string", "maxLength": 1000},
            "authorization_header": {"type": "string", "maxLength": 100},
        },
    }
    hook = {"$ref": "#/components/schemas/Hook"}
    nfse_tag, hooks_tag, ops_tag = ["Focus NFS-e"], ["Focus gatilhos"], ["Operação"]
    nfce_tag = ["Focus NFC-e"]
    schemas_ref = "#/components/schemas/"
    nfce_view = {"$ref": f"{schemas_ref}NfceView"}
    return {
        "/v2/nfse": {
            "post": {
                "tags": nfse_tag,
                "operationId": "createNfse",
                "summary": "Emitir uma NFS-e",
                "description": "Valida, registra a ref e publica o comando (acks=all); a "
                "autorização segue de forma assíncrona. O corpo é lido como JSON qualquer que "
                "seja o Content-Type.",
                "security": FOCUS_AUTH,
                "parameters": [{**REF_PARAM, "in": "query"}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Nfse"}}
                    },
                },
                "responses": {
                    "202": _json({"$ref": "#/components/schemas/NfseAccepted"}, "Aceita"),
                    **_focus_errors(
                        400,
                        401,
                        403,
                        413,
                        415,
                        422,
                        503,
                        s400=["requisicao_invalida", "empresa_nao_habilitada"],
                    ),
                },
            }
        },
        "/v2/nfse/{ref}": {
            "parameters": [REF_PARAM],
            "get": {
                "tags": nfse_tag,
                "operationId": "getNfse",
                "summary": "Consultar uma NFS-e",
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
                    "200": _json({"$ref": "#/components/schemas/NfseView"}, "A nota"),
                    **_focus_errors(401, 403, 404),
                },
            },
            "delete": {
                "tags": nfse_tag,
                "operationId": "cancelNfse",
                "summary": "Cancelar uma NFS-e",
                "description": "Síncrono como na Focus; passado NOTAFLOW_CANCEL_WAIT, 202 com a "
                "nota como está e o resultado por GET e webhook.",
                "security": FOCUS_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["justificativa"],
                                "properties": {
                                    "justificativa": {
                                        "type": "string",
                                        "minLength": 15,
                                        "maxLength": 255,
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"enum": ["cancelado", "erro_cancelamento"]},
                                "erros": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Erro"},
                                },
                            },
                        },
                        "Cancelada, ou recusada pela prefeitura",
                    ),
                    "202": _json(
                        {"$ref": "#/components/schemas/NfseView"},
                        "Ainda sem resposta do provedor: a nota como está",
                    ),
                    **_focus_errors(
                        400,
                        401,
                        403,
                        404,
                        413,
                        415,
                        503,
                        s400=["requisicao_invalida", "nfe_cancelada", "nfe_nao_autorizada"],
                    ),
                },
            },
        },
        "/v2/nfse/{ref}/email": {
            "parameters": [REF_PARAM],
            "post": {
                "tags": nfse_tag,
                "operationId": "emailNfse",
                "summary": "Enviar a nota por e-mail",
                "description": "Até 10 endereços; responde na hora, envio em segundo plano.",
                "security": FOCUS_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
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
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "emails": {"type": "array", "items": {"type": "string"}}
                            },
                        },
                        "Os endereços, sem repetição",
                    ),
                    **_focus_errors(
                        400,
                        401,
                        403,
                        404,
                        413,
                        415,
                        503,
                        s400=["requisicao_invalida", "nfe_nao_autorizada"],
                    ),
                },
            },
        },
        "/v2/nfse/{ref}/hook": {
            "parameters": [REF_PARAM],
            "post": {
                "tags": nfse_tag,
                "operationId": "refireHooks",
                "summary": "Disparar de novo os gatilhos da nota",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": _json({"type": "array", "items": hook}, "Os gatilhos disparados"),
                    **_focus_errors(401, 403, 404, 503),
                },
            },
        },
        "/notas_fiscais_servico/{name}": {
            "get": {
                "tags": nfse_tag,
                "operationId": "getNfseXml",
                "summary": "XML da nota autorizada",
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
                    **_focus_errors(404),
                },
            }
        },
        "/v2/nfce": {
            "post": {
                "tags": nfce_tag,
                "operationId": "createNfce",
                "summary": "Emitir uma NFC-e (síncrono)",
                "description": "Documento no formato do Emites-Client; espera a SEFAZ até "
                "NOTAFLOW_NFCE_WAIT: 201 autorizada, 422 rejeitada, 202 ainda em processamento.",
                "security": FOCUS_AUTH,
                "parameters": [{**REF_PARAM, "in": "query"}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"{schemas_ref}Nfce"}}},
                },
                "responses": {
                    "201": _json(nfce_view, "Autorizada"),
                    "202": _json(nfce_view, "Ainda em processamento: a nota como está"),
                    **_focus_errors(
                        400,
                        401,
                        403,
                        413,
                        415,
                        422,
                        503,
                        s400=["requisicao_invalida", "empresa_nao_habilitada"],
                    ),
                    "422": {
                        "description": "Rejeitada pela SEFAZ (a nota, com `erros`), ou ref já "
                        "usada (`nfe_autorizada`, `em_processamento`)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        nfce_view,
                                        _focus_error(422)["content"]["application/json"]["schema"],
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
                "tags": nfce_tag,
                "operationId": "getNfce",
                "summary": "Consultar uma NFC-e",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": _json(nfce_view, "A nota"),
                    **_focus_errors(401, 403, 404),
                },
            },
            "delete": {
                "tags": nfce_tag,
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
                    "200": _json(nfce_view, "Cancelada, ou `erro_cancelamento` com `erros`"),
                    "202": _json(nfce_view, "Ainda sem resposta: a nota como está"),
                    **_focus_errors(
                        400,
                        401,
                        403,
                        404,
                        413,
                        415,
                        503,
                        s400=["requisicao_invalida", "nfe_cancelada", "nfe_nao_autorizada"],
                    ),
                },
            },
        },
        "/v2/nfce/{ref}/danfe.pdf": {
            "parameters": [REF_PARAM],
            "get": {
                "tags": nfce_tag,
                "operationId": "getNfceDanfe",
                "summary": "DANFE da NFC-e (PDF)",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": {
                        "description": "O PDF",
                        "content": {"application/pdf": {"schema": {"type": "string"}}},
                    },
                    **_focus_errors(401, 403, 404),
                },
            },
        },
        "/v2/nfce/{ref}/xml": {
            "parameters": [REF_PARAM],
            "get": {
                "tags": nfce_tag,
                "operationId": "getNfceXml",
                "summary": "XML da NFC-e",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": {
                        "description": "O XML",
                        "content": {"application/xml": {"schema": {"type": "string"}}},
                    },
                    **_focus_errors(401, 403, 404),
                },
            },
        },
        "/v2/hooks": {
            "post": {
                "tags": hooks_tag,
                "operationId": "createHook",
                "summary": "Criar um gatilho",
                "description": "No máximo 5 por empresa e evento (os desativados não contam); "
                "a resposta traz o `signing_secret` das assinaturas. Um gatilho que falha a "
                "maioria das entregas por 7 dias é desativado (`disabled: true`).",
                "security": FOCUS_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": hook_body}},
                },
                "responses": {
                    "200": _json(hook, "O gatilho criado"),
                    **_focus_errors(400, 401, 403, 404, 413, 415),
                },
            },
            "get": {
                "tags": hooks_tag,
                "operationId": "listHooks",
                "summary": "Listar os gatilhos",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": _json({"type": "array", "items": hook}, "Os gatilhos"),
                    **_focus_errors(401, 403),
                },
            },
        },
        "/v2/hooks/{id}": {
            "parameters": [HOOK_ID_PARAM],
            "get": {
                "tags": hooks_tag,
                "operationId": "getHook",
                "summary": "Consultar um gatilho",
                "security": FOCUS_AUTH,
                "responses": {"200": _json(hook, "O gatilho"), **_focus_errors(401, 403, 404)},
            },
            "delete": {
                "tags": hooks_tag,
                "operationId": "deleteHook",
                "summary": "Excluir um gatilho",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": _json(hook, "O gatilho, com `deleted: true`"),
                    **_focus_errors(401, 403, 404),
                },
            },
        },
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
                    "200": _json(
                        {"type": "object", "properties": {"status": {"const": "recebido"}}},
                        "Publicado para o consumidor de emissão",
                    ),
                    **_focus_errors(400, 401, 413, 415, 503, s401=["nao_autorizado"]),
                },
            }
        },
        "/api/v1/integracao/cliente/nota_fiscal/enviar_email": {
            "post": {
                "tags": ["HubSoft"],
                "operationId": "hubsoftEnviarEmail",
                "summary": "Enviar a nota por e-mail (HubSoft, síncrono)",
                "description": "Espera o envio (até NOTAFLOW_SYNC_EMAIL_WAIT) e responde uma "
                "entrada por destinatário; sucesso parcial é `status: success`.",
                "security": [{"hubsoftBearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["id_nota_fiscal", "tipo_documento"],
                                "properties": {
                                    "id_nota_fiscal": {"type": ["integer", "string"]},
                                    "tipo_documento": {"enum": ["nfse", "nfe", "nf_telecom"]},
                                    "email_adicional": {
                                        "type": "array",
                                        "maxItems": 10,
                                        "items": {"type": "string"},
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/HubsoftEmailSent"}, "Enviados"),
                    "400": _hubsoft_error(
                        "Campo ausente ou inválido, nota não autorizada, `nfe`/`nf_telecom` "
                        "(não emitidos aqui), sem servidor SMTP configurado, sem destinatários"
                    ),
                    "401": _hubsoft_error("Token ausente, inválido ou revogado"),
                    "404": _hubsoft_error("Nota fiscal não encontrada"),
                    "413": _hubsoft_error("Corpo grande demais"),
                    "503": _hubsoft_error(
                        "Kafka ou o banco de dados indisponível; nada foi enviado"
                    ),
                    "504": _hubsoft_error("Tempo esgotado; os envios continuam na fila"),
                    "500": _hubsoft_error("Erro interno"),
                },
            }
        },
        "/healthz": {
            "get": {
                "tags": ops_tag,
                "operationId": "healthz",
                "summary": "Liveness",
                "security": [],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"status": {"const": "ok"}}}, "Vivo"
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "tags": ops_tag,
                "operationId": "readyz",
                "summary": "Readiness: Kafka e banco de dados acessíveis",
                "security": [],
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Readiness"}, "Pronto"),
                    "503": _json({"$ref": "#/components/schemas/Readiness"}, "Não pronto"),
                },
            }
        },
        "/metrics": {
            "get": {
                "tags": ops_tag,
                "operationId": "metrics",
                "summary": "Métricas Prometheus",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Formato de exposição de texto do Prometheus",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "tags": ops_tag,
                "operationId": "openapi",
                "summary": "Este documento",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
            }
        },
        "/docs": {
            "get": {
                "tags": ops_tag,
                "operationId": "docs",
                "summary": "Este documento em HTML",
                "security": [],
                "responses": {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def _nfsen_paths(paths: dict[str, Any]) -> dict[str, Any]:
    """`/v2/nfsen` (NFS-e Nacional) answers as `/v2/nfse` does, for its own document."""
    out: dict[str, Any] = {}
    for path, item in paths.items():
        if not path.startswith("/v2/nfse"):
            continue
        text = json.dumps(item).replace(
            '"#/components/schemas/Nfse"', '"#/components/schemas/Nfsen"'
        )
        copied = json.loads(text)
        for operation in copied.values():
            if isinstance(operation, dict) and "operationId" in operation:
                operation["operationId"] = operation["operationId"].replace("Nfse", "Nfsen")
                operation["operationId"] = operation["operationId"].replace(
                    "refireHooks", "refireNfsenHooks"
                )
                operation["tags"] = ["Focus NFS-e Nacional"]
                operation["summary"] = operation["summary"].replace("NFS-e", "NFS-e Nacional")
        out[path.replace("/v2/nfse", "/v2/nfsen", 1)] = copied
    out["/notas_fiscais_servico_nacional/{name}"] = {
        **copy.deepcopy(paths["/notas_fiscais_servico/{name}"]),
    }
    xml = out["/notas_fiscais_servico_nacional/{name}"]["get"]
    xml["operationId"], xml["tags"] = "getNfsenXml", ["Focus NFS-e Nacional"]
    xml["summary"] = "XML da NFS-e Nacional autorizada ou do seu cancelamento"
    return out


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every ingress route (a fresh dict per call)."""
    components = _components()
    components["schemas"]["Readiness"] = {
        "type": "object",
        "required": ["status", "kafka", "database"],
        "properties": {
            "status": {"enum": ["ready", "not_ready"]},
            "kafka": {"type": "boolean"},
            "database": {"type": "boolean"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "notaflow ingress",
            "version": "0.1.0",
            "summary": "NFS-e e e-mails de notas nos dialetos Focus NFe e HubSoft",
            "description": "Erros do dialeto Focus: `{codigo, mensagem, erros?}`; do HubSoft: "
            '`{status: "error", msg}`.',
        },
        "tags": [
            {"name": "Focus NFS-e"},
            {"name": "Focus NFS-e Nacional"},
            {"name": "Focus NFC-e"},
            {"name": "Focus gatilhos"},
            {"name": "HubSoft"},
            {"name": "Wuro"},
            {"name": "Provedores"},
            {"name": "Operação"},
            {"name": "Admin"},
        ],
        "security": FOCUS_AUTH,
        "paths": {
            **_paths(),
            **_nfsen_paths(_paths()),
            **hubsoft_financeiro.OPENAPI_PATHS,
            **wuro.OPENAPI_PATHS,
            **admin.OPENAPI_PATHS,
        },
        "components": components,
    }


@cache
def _openapi_bytes() -> bytes:
    return json.dumps(openapi_document(), ensure_ascii=False).encode()


# --- /docs -----------------------------------------------------------------------------------

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem}
.op{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.m{font-weight:bold;text-transform:uppercase;display:inline-block;min-width:4.5rem}
code,pre{background:#f5f5f5;padding:.1rem .3rem;border-radius:3px}
pre{padding:.5rem;overflow-x:auto;font-size:13px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


def _schema_label(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    return f"<pre>{html.escape(json.dumps(schema, ensure_ascii=False, indent=1))}</pre>"


def _security_label(security: list[dict[str, Any]]) -> str:
    names = [name for requirement in security for name in requirement]
    return ", ".join(names) if names else "nenhuma"


@cache
def docs_html() -> str:
    """A self-contained HTML page rendered from `openapi_document()`."""
    doc = openapi_document()
    esc = html.escape
    out = [
        "<!doctype html><html lang='pt-BR'><head><meta charset='utf-8'>",
        f"<title>{esc(doc['info']['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(doc['info']['title'])} <small>{esc(doc['info']['version'])}</small></h1>",
        f"<p>{esc(doc['info']['description'])}</p>",
        "<p>Documento-fonte: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>",
        "<h2>Autenticação</h2><ul>",
    ]
    for name, scheme in doc["components"]["securitySchemes"].items():
        out.append(f"<li><b>{esc(name)}</b> ({esc(scheme['type'])}): ")
        out.append(f"{esc(scheme.get('description', ''))}</li>")
    out.append("</ul><h2>Rotas</h2>")
    for path, item in doc["paths"].items():
        shared = item.get("parameters", [])
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            out.append(f"<div class='op' id='{esc(op['operationId'])}'>")
            out.append(f"<h3><span class='m'>{method}</span> <code>{esc(path)}</code></h3>")
            out.append(f"<p><b>{esc(op['summary'])}</b></p>")
            if op.get("description"):
                out.append(f"<p>{esc(op['description'])}</p>")
            security = op.get("security", doc["security"])
            out.append(f"<p>Autenticação: {esc(_security_label(security))}</p>")
            params = [*shared, *op.get("parameters", [])]
            if params:
                out.append("<table><tr><th>parâmetro</th><th>em</th><th>obrigatório</th>")
                out.append("<th>esquema</th><th>descrição</th></tr>")
                for p in params:
                    out.append(
                        f"<tr><td><code>{esc(p['name'])}</code></td><td>{esc(p['in'])}</td>"
                        f"<td>{'sim' if p.get('required') else 'não'}</td>"
                        f"<td><code>{esc(json.dumps(p.get('schema', {})))}</code></td>"
                        f"<td>{esc(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            body = op.get("requestBody")
            if body:
                for media, content in body["content"].items():
                    out.append(f"<p>Corpo (<code>{esc(media)}</code>): ")
                    out.append(_schema_label(content["schema"]) + "</p>")
            out.append("<table><tr><th>status</th><th>resposta</th><th>corpo</th></tr>")
            for status, response in op["responses"].items():
                content = response.get("content", {})
                label = ", ".join(
                    f"<code>{esc(media)}</code> {_schema_label(c['schema'])}"
                    for media, c in content.items()
                )
                out.append(
                    f"<tr><td>{esc(status)}</td><td>{esc(response['description'])}</td>"
                    f"<td>{label}</td></tr>"
                )
            out.append("</table></div>")
    out.append("<h2>Esquemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        out.append(f"<h3 id='schema-{esc(name)}'>{esc(name)}</h3>")
        out.append(f"<pre>{esc(json.dumps(schema, ensure_ascii=False, indent=1))}</pre>")
    out.append("</body></html>")
    return "".join(out)
