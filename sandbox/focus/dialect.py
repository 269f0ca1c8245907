"""Focus's error dialect and request bodies as the sandbox reads them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

# Real Focus takes any body it can parse as JSON whatever the declared type (PHP's curl sends
# form-urlencoded); only a body declared as another document format is refused with 415.
_NON_JSON_TYPES = ("application/xml", "text/xml", "multipart/form-data", "text/html")


class FocusError(Exception):
    """An answer in the Focus error dialect; raised anywhere in a handler."""

    def __init__(self, status_code: int, codigo: str, mensagem: str) -> None:
        super().__init__(mensagem)
        self.status_code = status_code
        self.codigo = codigo
        self.mensagem = mensagem

    def response(self) -> JSONResponse:
        body = {"codigo": self.codigo, "mensagem": self.mensagem}
        return JSONResponse(body, status_code=self.status_code)


def invalid(mensagem: str) -> FocusError:
    return FocusError(400, "requisicao_invalida", mensagem)


def not_found(mensagem: str = "Nota fiscal não encontrada") -> FocusError:
    return FocusError(404, "nao_encontrado", mensagem)


async def json_object(request: Request, *, empty_ok: bool = False) -> dict[str, Any]:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in _NON_JSON_TYPES:
        raise FocusError(415, "formato_invalido", "O corpo da requisição deve ser JSON")
    raw = await request.body()
    if not raw.strip() and empty_ok:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid("JSON inválido") from exc
    if not isinstance(body, dict):
        raise invalid("JSON inválido: esperado um objeto")
    return body


def dig(doc: Mapping[str, Any], *path: str) -> object:
    value: object = doc
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value
