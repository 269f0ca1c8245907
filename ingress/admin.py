"""The admin API (/admin/v1): provider accounts, for operators (issue 15).

Authenticated by an operator token (`notaflow operator create`), sent as
`Authorization: Bearer <token>`, stored hashed in its own table: a tenant's token is refused
here, and an operator's is refused on the tenant routes. Answers and errors are in the Focus
dialect ({codigo, mensagem}). A secret goes in (create, rotate) and never comes out: every
answer is the account without it (`has_secret` says whether there is one).

    POST /admin/v1/accounts                                  create    201
    GET  /admin/v1/accounts[?tenant=T]                       list      200
    GET  /admin/v1/accounts/{tenant}/{cnpj}/{provider}        one       200
    POST /admin/v1/accounts/{tenant}/{cnpj}/{provider}/rotate replace the secret (and config)
    POST /admin/v1/accounts/{tenant}/{cnpj}/{provider}/disable | /enable
"""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow.account_keys import SecretUnreadable
from notaflow.accounts import Account, AccountDisabled, InvalidAccount, Provider
from notaflow.errors import ConfigurationError
from notaflow.ingress.auth import MAX_TOKEN_CHARS
from notaflow.ingress.deps import IngressDeps, deps
from notaflow.ingress.dialects import FOCUS, FocusError
from notaflow.ingress.openapi_parts import Description
from notaflow.ingress.responses import FastJSONResponse
from notaflow.store.accounts import AccountExists

PREFIX = "/admin/v1/accounts"


async def _operator(request: Request, d: IngressDeps) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    # The scheme is no secret (and may be any latin-1 text a client sends): a plain compare.
    if scheme.lower() != "bearer" or not token:
        raise FocusError(
            401,
            "nao_autorizado",
            "Informe o token de operador (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="notaflow-admin"'},
        )
    label = None if len(token) > MAX_TOKEN_CHARS else await d.operators.label_of(token)
    if label is None:
        raise FocusError(403, "permissao_negada", "Token de operador inválido ou revogado")
    return label


def _provider(value: object) -> Provider:
    try:
        return Provider(str(value))
    except ValueError:
        raise FOCUS.invalid(f"provider deve ser um de: {', '.join(Provider)}") from None


def _key(request: Request) -> tuple[str, str, Provider]:
    p = request.path_params
    return p["tenant"], p["cnpj"], _provider(p["provider"])


def _shown(account: Account) -> dict[str, Any]:
    return account.public()


async def _body(request: Request, d: IngressDeps) -> dict[str, Any]:
    body = await FOCUS.json(request, d.settings.max_body_bytes, empty={})
    if not isinstance(body, dict):
        raise FOCUS.invalid("O corpo deve ser um objeto JSON")
    return body


def _secret(body: dict[str, Any]) -> str | None:
    secret = body.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise FOCUS.invalid("secret deve ser um texto")  # never the value: it is a secret
    return secret or None


def _config(body: dict[str, Any], required: bool) -> dict[str, Any] | None:
    config = body.get("config")
    if config is None and not required:
        return None
    if not isinstance(config, dict):
        raise FOCUS.invalid("config deve ser um objeto JSON")
    return config


async def _refresh(d: IngressDeps, tenant: str, cnpj: str, provider: Provider) -> None:
    # This replica's door check sees the change at once; the others within the cache's TTL.
    # A disabled account raises here, as it should at the door.
    with contextlib.suppress(AccountDisabled):
        await d.accounts.account(tenant, cnpj, provider, fresh=True)


def _account_error(exc: Exception) -> FocusError:
    if isinstance(exc, InvalidAccount):
        return FOCUS.invalid(str(exc))
    if isinstance(exc, AccountExists):
        return FocusError(409, "conta_existente", f"{exc}: use rotate para trocar o segredo")
    if isinstance(exc, ConfigurationError | SecretUnreadable):
        # The server cannot seal or open secrets: the operator's configuration, said plainly.
        return FocusError(503, "chaves_indisponiveis", str(exc))
    raise exc


async def create_account(request: Request) -> Response:
    d = deps(request)
    await _operator(request, d)
    body = await _body(request, d)
    unknown = sorted(set(body) - {"tenant", "cnpj", "provider", "config", "secret"})
    if unknown:
        raise FOCUS.invalid(f"campo desconhecido: {unknown[0]}")
    tenant, cnpj = body.get("tenant"), body.get("cnpj")
    if not isinstance(tenant, str) or not isinstance(cnpj, str):
        raise FOCUS.invalid("tenant e cnpj são obrigatórios (textos)")
    provider = _provider(body.get("provider"))
    config = _config(body, required=True)
    assert config is not None
    try:
        account = await d.account_store.create(tenant, cnpj, provider, config, _secret(body))
    except (InvalidAccount, AccountExists, ConfigurationError) as exc:
        raise _account_error(exc) from exc
    await _refresh(d, tenant, cnpj, provider)
    return FastJSONResponse(_shown(account), status_code=201)


async def list_accounts(request: Request) -> Response:
    d = deps(request)
    await _operator(request, d)
    tenant = request.query_params.get("tenant") or None
    accounts = await d.account_store.list(tenant)
    return FastJSONResponse({"accounts": [_shown(a) for a in accounts]})


async def _one(d: IngressDeps, tenant: str, cnpj: str, provider: Provider) -> Account:
    found = [
        a for a in await d.account_store.list(tenant) if (a.cnpj, a.provider) == (cnpj, provider)
    ]
    if not found:
        raise FocusError(404, "nao_encontrado", "Conta não encontrada")
    return found[0]


async def get_account(request: Request) -> Response:
    d = deps(request)
    await _operator(request, d)
    return FastJSONResponse(_shown(await _one(d, *_key(request))))


async def rotate_account(request: Request) -> Response:
    d = deps(request)
    await _operator(request, d)
    tenant, cnpj, provider = _key(request)
    body = await _body(request, d)
    unknown = sorted(set(body) - {"config", "secret"})
    if unknown:
        raise FOCUS.invalid(f"campo desconhecido: {unknown[0]}")
    try:
        done = await d.account_store.rotate(
            tenant, cnpj, provider, _secret(body), _config(body, required=False)
        )
    except (InvalidAccount, ConfigurationError, SecretUnreadable) as exc:
        raise _account_error(exc) from exc
    if not done:
        raise FocusError(404, "nao_encontrado", "Conta não encontrada")
    await _refresh(d, tenant, cnpj, provider)
    return FastJSONResponse(_shown(await _one(d, tenant, cnpj, provider)))


def _switch(disable: bool) -> Any:
    async def handler(request: Request) -> Response:
        d = deps(request)
        await _operator(request, d)
        tenant, cnpj, provider = _key(request)
        change = d.account_store.disable if disable else d.account_store.enable
        if not await change(tenant, cnpj, provider):
            raise FocusError(404, "nao_encontrado", "Conta não encontrada")
        await _refresh(d, tenant, cnpj, provider)
        return FastJSONResponse(_shown(await _one(d, tenant, cnpj, provider)))

    return handler


_ONE = PREFIX + "/{tenant}/{cnpj}/{provider}"
routes = [
    Route(PREFIX, create_account, methods=["POST"]),
    Route(PREFIX, list_accounts, methods=["GET"]),
    Route(_ONE, get_account, methods=["GET"]),
    Route(_ONE + "/rotate", rotate_account, methods=["POST"]),
    Route(_ONE + "/disable", _switch(disable=True), methods=["POST"]),
    Route(_ONE + "/enable", _switch(disable=False), methods=["POST"]),
]

# OpenAPI: the admin API's paths, next to its routes (merged by ingress/openapi.py).
OPENAPI_SECURITY: dict[str, Any] = {
    "operatorBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "API de administração: `Authorization: Bearer <token de operador>` "
        "(`notaflow operator create`); tokens de tenant são recusados.",
    }
}
_AUTH: list[dict[str, list[str]]] = [{"operatorBearer": []}]
_ERROR = {"$ref": "#/components/schemas/FocusError"}
_ACCOUNT: dict[str, Any] = {
    "type": "object",
    "description": "A conta, nunca com o segredo (`has_secret` diz se há um).",
    "properties": {
        "tenant": {"type": "string"},
        "cnpj": {"type": "string", "description": "14 dígitos, ou `*`: todas as empresas"},
        "provider": {"enum": list(Provider)},
        "config": {"type": "object"},
        "has_secret": {"type": "boolean"},
        "disabled": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "disabled_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
_WRITE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "config": {
            "type": "object",
            "description": "focus: environment (homologacao|producao); emites: host, port, "
            "pool, timeout; smtp: host, port, security, username, sender, sender_name, timeout",
        },
        "secret": {
            "type": "string",
            "writeOnly": True,
            "description": "focus: o token; smtp: a senha; guardado cifrado",
        },
    },
}


def _answer(status: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    content = {"application/json": {"schema": schema}}
    return {status: {"description": description, "content": content}}


def _errors(*statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in (*statuses, 401, 403, 405, 500, 503):
        out.update(_answer(str(status), _ERROR, "Erro no dialeto Focus ({codigo, mensagem})"))
    return out


def _operation(
    op_id: str,
    summary: str,
    ok: str,
    schema: dict[str, Any],
    *errors: int,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["Admin"],
        "operationId": op_id,
        "summary": summary,
        "security": _AUTH,
        "responses": {**_answer(ok, schema, "Conta (sem segredo)"), **_errors(*errors)},
    }
    if body is not None:
        content = {"application/json": {"schema": body}}
        operation["requestBody"] = {"required": True, "content": content}
    return operation


_PARAMS = [
    {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
    for n in ("tenant", "cnpj", "provider")
]
_CREATE = {
    **_WRITE,
    "required": ["tenant", "cnpj", "provider", "config"],
    "properties": {
        "tenant": {"type": "string"},
        "cnpj": {"type": "string"},
        "provider": {"enum": list(Provider)},
        **_WRITE["properties"],
    },
}
_LIST = {"type": "object", "properties": {"accounts": {"type": "array", "items": _ACCOUNT}}}
OPENAPI_PATHS: dict[str, Any] = {
    PREFIX: {
        "post": _operation("adminCreateAccount", "Criar a conta de uma empresa num provedor",
                           "201", _ACCOUNT, 400, 409, body=_CREATE),
        "get": {
            **_operation("adminListAccounts", "Listar as contas (sem segredos)", "200", _LIST),
            "parameters": [{"name": "tenant", "in": "query", "schema": {"type": "string"}}],
        },
    },
    _ONE: {
        "parameters": _PARAMS,
        "get": _operation("adminGetAccount", "Uma conta (sem segredo)", "200", _ACCOUNT, 400, 404),
    },
    _ONE + "/rotate": {
        "parameters": _PARAMS,
        "post": _operation("adminRotateAccount", "Trocar o segredo (e a config, se dada)", "200",
                           _ACCOUNT, 400, 404, body=_WRITE),
    },
    _ONE + "/disable": {
        "parameters": _PARAMS,
        "post": _operation("adminDisableAccount", "Desabilitar: novos comandos da empresa são "
                           "recusados (403 conta_desabilitada)", "200", _ACCOUNT, 400, 404),
    },
    _ONE + "/enable": {
        "parameters": _PARAMS,
        "post": _operation("adminEnableAccount", "Reabilitar a conta", "200", _ACCOUNT, 400, 404),
    },
}  # fmt: skip

OPENAPI = Description(paths=OPENAPI_PATHS, security_schemes=OPENAPI_SECURITY)
