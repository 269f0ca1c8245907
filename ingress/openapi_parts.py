"""The pieces every dialect describes its routes with in the OpenAPI 3.1 document.

Each route module declares `OPENAPI`, a `Description` of its own paths (next to its `routes`),
with the components only it uses; `ingress.openapi` merges them. What several dialects share
lives here: the error answers of the Focus and HubSoft dialects (every error is described in the
shape its dialect answers), their security schemes, the path parameters, and the project's JSON
Schemas (`schemas/`) made components — 2020-12 is OpenAPI 3.1's own dialect, so a request body
references the very schema the ingress validates it with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from notaflow import schemas

__all__ = [
    "COMMON",
    "CREATE_ERRORS",
    "FOCUS_AUTH",
    "HOOK_ID_PARAM",
    "NOTE_BODY_ERRORS",
    "REF_PARAM",
    "Description",
    "embedded_schema",
    "focus_error",
    "focus_errors",
    "hubsoft_error",
    "json_response",
]


@dataclass(frozen=True)
class Description:
    """One module's part of the document: its paths, and the components they alone use."""

    paths: Mapping[str, Any]
    schemas: Mapping[str, Any] = field(default_factory=dict)
    security_schemes: Mapping[str, Any] = field(default_factory=dict)


SCHEMAS = "#/components/schemas/"
FOCUS_ERROR = {"$ref": f"{SCHEMAS}FocusError"}
HUBSOFT_ERROR = {"$ref": f"{SCHEMAS}HubsoftError"}
FOCUS_AUTH: list[dict[str, list[str]]] = [{"focusBasic": []}]
HUBSOFT_AUTH: list[dict[str, list[str]]] = [{"hubsoftBearer": []}]

# Every `codigo` the Focus dialect answers, by status (ingress.dialects, the routes).
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


def focus_error(status: int, codes: list[str] | None = None, description: str = "") -> Any:
    """One Focus error answer: `{codigo, mensagem}` with the `codigo`s this status carries."""
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


# The error statuses of a Focus route that creates a note from a JSON body, and of one that acts
# on an existing note with a JSON body (404 instead of 422).
CREATE_ERRORS = (400, 401, 403, 413, 415, 422, 503)
NOTE_BODY_ERRORS = (400, 401, 403, 404, 413, 415, 503)


def focus_errors(*statuses: int, **overrides: list[str]) -> dict[str, Any]:
    """Error responses of a Focus route: the given statuses plus the ones every route has
    (405; 500; 503 when the database is out of reach). `s400=[...]` names a status's codes."""
    out: dict[str, Any] = {}
    for status in sorted({*statuses, 405, 500, 503}):
        out[str(status)] = focus_error(status, overrides.get(f"s{status}"))
    return out


def hubsoft_error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": HUBSOFT_ERROR}}}


def json_response(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def embedded_schema(name: str, component: str) -> dict[str, Any]:
    """`schemas.load(name)` made a component: its `#/$defs/…` references point at the component
    (a `$ref` inside the OpenAPI document resolves against the document, not the schema file),
    and `$schema`/`$id` go, since 2020-12 is already the document's dialect."""
    schema = schemas.load(name)
    schema.pop("$schema", None)
    schema.pop("$id", None)
    base = f"{SCHEMAS}{component}"

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

_STRING = {"type": "string"}
ERROS = {"type": "array", "items": {"$ref": f"{SCHEMAS}Erro"}}

# The two dialects' error shapes and credentials, which several route modules answer with.
COMMON = Description(
    paths={},
    schemas={
        "FocusError": {
            "type": "object",
            "required": ["codigo", "mensagem"],
            "properties": {"codigo": _STRING, "mensagem": _STRING, "erros": ERROS},
        },
        "Erro": {
            "type": "object",
            "properties": {"codigo": _STRING, "mensagem": _STRING, "correcao": _STRING},
        },
        "HubsoftError": {
            "type": "object",
            "required": ["status", "msg"],
            "properties": {"status": {"const": "error"}, "msg": _STRING},
        },
    },
    security_schemes={
        "focusBasic": {
            "type": "http",
            "scheme": "basic",
            "description": "Dialeto Focus NFe: o token como usuário, senha vazia "
            '(`curl -u "TOKEN:"`).',
        },
        "hubsoftBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "Dialeto HubSoft: `Authorization: Bearer <token do tenant>`.",
        },
    },
)
