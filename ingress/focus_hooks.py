"""Focus NFe dialect, webhooks (gatilhos): POST/GET/DELETE /v2/hooks.

Beyond Focus, each hook gets a `signing_secret`: deliveries carry a Standard Webhooks
signature receivers can verify, besides the static authorization value Focus offers.

A hook failing most deliveries for 7 days is disabled by the notification consumer (Focus does
too). GET still answers it, with `"disabled": true`, so the client sees why deliveries stopped;
it no longer counts toward the limit of 5, and the client re-enables it by creating a new one."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import destinations
from notaflow.brdocs import clean_document, valid_cnpj, valid_cpf
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.focus_request import authenticate
from notaflow.ingress.openapi_parts import (
    FOCUS_AUTH,
    HOOK_ID_PARAM,
    SCHEMAS,
    Description,
    focus_errors,
    json_response,
)
from notaflow.ingress.responses import FastJSONResponse
from notaflow.store import Hook, TooManyHooks
from notaflow.webhook_signing import new_secret

EVENTS = ("nfse", "nfsen", "nfe", "nfce", "nfce_contingencia", "inutilizacao", "cte", "mdfe")


def _text(body: dict[str, object], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:  # NUL: PostgreSQL
        raise FOCUS.invalid(f'Parâmetro "{name}" inválido')
    return value


def _valid_url(url: str) -> bool:
    if "\x00" in url:  # never in a URL, and PostgreSQL refuses it in text
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.username


async def destination_refusal(
    url: str, authorization: str | None, header: str | None, allow_private: bool
) -> str:
    """Why the notification consumer would refuse to deliver there ("" if it would not): the
    delivery policy (`notaflow.destinations`), applied when the hook is created, so the client
    hears it now rather than through deliveries that silently never happen. A name that does
    not resolve at the moment is accepted: each delivery resolves and checks again."""
    try:
        _, host, port = destinations.parse_destination(url)
        if authorization is not None:
            destinations.check_header(header or "Authorization", authorization)
        if allow_private:
            return ""
        ip = destinations.literal(host)
        if ip is not None:
            destinations.check_addresses(host, [str(ip)])
            return ""
        try:
            async with asyncio.timeout(_RESOLVE_TIMEOUT):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except (OSError, TimeoutError):
            return ""
        destinations.check_addresses(host, [str(info[4][0]) for info in infos])
    except destinations.Unresolved:
        return ""
    except destinations.DestinationError as exc:
        return f"URL inválida: {url} ({_PORTUGUESE.get(_kind(str(exc)), str(exc))})"
    return ""


# How long hook creation waits for DNS before accepting the name unchecked (the delivery
# checks it again).
_RESOLVE_TIMEOUT = 3.0
_PORTUGUESE = {
    "address": "o destino não é um endereço público",
    "control": "caracteres de controle ou espaços não são permitidos",
    "header": "cabeçalho de autorização não permitido ou com caracteres de controle",
    "ascii": "o valor de autorização deve conter apenas caracteres ASCII",
}


def _kind(message: str) -> str:
    """The policy's (English) reason, as the key of its Portuguese wording."""
    if "non-public" in message or "non-IP" in message:
        return "address"
    if message == "authorization value is not ASCII":
        return "ascii"
    if message.startswith("authorization"):
        return "header"
    if message.startswith("control"):
        return "control"
    return message


async def create_hook(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    body = await FOCUS.json(request, d.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise FOCUS.invalid("O corpo da requisição deve ser um objeto JSON")
    event = body.get("event")
    if event not in EVENTS:
        raise FOCUS.invalid('Parâmetro "event" deve ser um evento válido.')
    url = body.get("url")
    if url is None or url == "":
        raise FOCUS.invalid('Parâmetro "url" não informado')
    if not isinstance(url, str) or len(url) > 2000 or not _valid_url(url):
        raise FOCUS.invalid(f"URL inválida: {url}")
    authorization = _text(body, "authorization", 1000)
    authorization_header = _text(body, "authorization_header", 100)
    refusal = await destination_refusal(
        url, authorization, authorization_header, d.settings.hooks_allow_private
    )
    if refusal:
        raise FOCUS.invalid(refusal)
    cnpj = _text(body, "cnpj", 18)
    cpf = _text(body, "cpf", 14)
    if cnpj and cpf:
        raise FOCUS.invalid("Informe cnpj ou cpf, não ambos")
    if cnpj:
        cnpj = clean_document(cnpj)
        if not valid_cnpj(cnpj):
            raise FOCUS.invalid('Parâmetro "cnpj" inválido')
        if cnpj not in tenant.cnpjs:
            raise FocusError(404, "nao_encontrado", "Empresa não encontrada")
    if cpf:
        cpf = clean_document(cpf)
        if not valid_cpf(cpf):
            raise FOCUS.invalid('Parâmetro "cpf" inválido')
    try:
        hook = await d.hooks.create(
            tenant.id,
            str(event),
            url,
            signing_secret=new_secret(),
            cnpj=cnpj,
            cpf=cpf,
            authorization=authorization,
            authorization_header=authorization_header,
        )
    except TooManyHooks as exc:
        raise FOCUS.invalid("Limite de 5 gatilhos por empresa e evento atingido") from exc
    return FastJSONResponse(hook.public())


async def list_hooks(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    return FastJSONResponse([hook.public() for hook in await d.hooks.all(tenant.id)])


async def _live_hook(d: IngressDeps, tenant: str, hook_id: str) -> Hook:
    """The tenant's hook unless deleted (a disabled one still answers), or Focus's 404."""
    hook = await d.hooks.get(tenant, hook_id)
    if hook is None or hook.deleted:
        raise FocusError(404, "nao_encontrado", "Gatilho não encontrado")
    return hook


async def get_hook(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    hook = await _live_hook(d, tenant.id, request.path_params["id"])
    return FastJSONResponse(hook.public())


async def delete_hook(request: Request) -> Response:
    d = deps(request)
    tenant = await authenticate(request, d)
    existing = await _live_hook(d, tenant.id, request.path_params["id"])
    hook = await d.hooks.delete(tenant.id, existing.id)
    assert hook is not None
    return FastJSONResponse(hook.public())


routes = [
    Route("/v2/hooks", create_hook, methods=["POST"]),
    Route("/v2/hooks", list_hooks, methods=["GET"]),
    Route("/v2/hooks/{id}", get_hook, methods=["GET"]),
    Route("/v2/hooks/{id}", delete_hook, methods=["DELETE"]),
]

_TAGS, _HOOK = ["Focus gatilhos"], {"$ref": f"{SCHEMAS}Hook"}
_HOOK_BODY = {
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
OPENAPI = Description(
    paths={
        "/v2/hooks": {
            "post": {
                "tags": _TAGS,
                "operationId": "createHook",
                "summary": "Criar um gatilho",
                "description": "No máximo 5 por empresa e evento (os desativados não contam); "
                "a resposta traz o `signing_secret` das assinaturas. Um gatilho que falha a "
                "maioria das entregas por 7 dias é desativado (`disabled: true`).",
                "security": FOCUS_AUTH,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _HOOK_BODY}},
                },
                "responses": {
                    "200": json_response(_HOOK, "O gatilho criado"),
                    **focus_errors(400, 401, 403, 404, 413, 415),
                },
            },
            "get": {
                "tags": _TAGS,
                "operationId": "listHooks",
                "summary": "Listar os gatilhos",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": json_response({"type": "array", "items": _HOOK}, "Os gatilhos"),
                    **focus_errors(401, 403),
                },
            },
        },
        "/v2/hooks/{id}": {
            "parameters": [HOOK_ID_PARAM],
            "get": {
                "tags": _TAGS,
                "operationId": "getHook",
                "summary": "Consultar um gatilho",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": json_response(_HOOK, "O gatilho"),
                    **focus_errors(401, 403, 404),
                },
            },
            "delete": {
                "tags": _TAGS,
                "operationId": "deleteHook",
                "summary": "Excluir um gatilho",
                "security": FOCUS_AUTH,
                "responses": {
                    "200": json_response(_HOOK, "O gatilho, com `deleted: true`"),
                    **focus_errors(401, 403, 404),
                },
            },
        },
    },
    schemas={
        "Hook": {
            "type": "object",
            "required": ["id", "url", "event"],
            "properties": {
                "id": {"type": "string"},
                "cnpj": {"type": ["string", "null"]},
                "cpf": {"type": "string"},
                "url": {"type": "string", "format": "uri"},
                "authorization": {"type": ["string", "null"]},
                "authorization_header": {"type": ["string", "null"]},
                "event": {"type": "string"},
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
    },
)
