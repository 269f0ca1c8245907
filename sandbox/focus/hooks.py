"""Gatilhos (hooks) as Focus keeps them: `POST/GET /v2/hooks`, `GET/DELETE /v2/hooks/ID`, at
most 5 per company and event; `matching` says which fire for a note."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus.config import FocusSandboxConfig
from notaflow.sandbox.focus.dialect import invalid, json_object, not_found

HOOK_EVENTS = frozenset(
    {"nfe", "nfse", "nfsen", "nfce", "nfce_contingencia", "inutilizacao", "cte", "mdfe"}
)
MAX_HOOKS_PER_COMPANY_EVENT = 5


@dataclass
class Hook:
    id: str
    token: str
    event: str
    url: str
    authorization: str | None
    authorization_header: str | None
    cnpj: str | None
    cpf: str | None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "authorization": self.authorization,
            "authorization_header": self.authorization_header,
            "event": self.event,
            "cnpj": self.cnpj,
        }
        if self.cpf is not None:
            body["cpf"] = self.cpf
        return body

    def limit_key(self) -> tuple[str, str, str | None, str | None]:
        return (self.token, self.event, self.cnpj, self.cpf)

    def fires_for(self, token: str, event: str, cnpj: str) -> bool:
        # A hook without company fires for every document of its token.
        company_matches = self.cnpj == cnpj or (self.cnpj is None and self.cpf is None)
        return self.token == token and self.event == event and company_matches


class Hooks:
    def __init__(self, config: FocusSandboxConfig) -> None:
        self._config = config
        self._hooks: dict[str, Hook] = {}

    def matching(self, token: str, event: str, cnpj: str) -> list[Hook]:
        return [h for h in self._hooks.values() if h.fires_for(token, event, cnpj)]

    async def create(self, request: Request, token: str) -> Response:
        body = await json_object(request)
        event = body.get("event")
        if event not in HOOK_EVENTS:
            raise invalid('Parâmetro "event" deve ser um evento válido.')
        url = body.get("url")
        if not isinstance(url, str) or not self._url_ok(url):
            raise invalid(f"URL inválida: {url}")
        cnpj = rules.digits(body.get("cnpj")) or None
        cpf = None if cnpj else rules.digits(body.get("cpf")) or None
        key = (token, event, cnpj, cpf)
        same = [h for h in self._hooks.values() if h.limit_key() == key]
        if len(same) >= MAX_HOOKS_PER_COMPANY_EVENT:
            raise invalid(
                f"Limite de {MAX_HOOKS_PER_COMPANY_EVENT} gatilhos por empresa e evento atingido."
            )
        hook = Hook(
            id=_hook_id(),
            token=token,
            event=event,
            url=url,
            authorization=_optional_str(body.get("authorization")),
            authorization_header=_optional_str(body.get("authorization_header")),
            cnpj=cnpj,
            cpf=cpf,
        )
        self._hooks[hook.id] = hook
        return JSONResponse(hook.as_dict())

    def _url_ok(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        allowed = self._config.allow_hook_to
        return not allowed or url.startswith(allowed)

    def _hook(self, token: str, hook_id: str) -> Hook:
        hook = self._hooks.get(hook_id)
        if hook is None or hook.token != token:
            raise not_found("Gatilho não encontrado")
        return hook

    async def list(self, request: Request, token: str) -> Response:
        return JSONResponse([h.as_dict() for h in self._hooks.values() if h.token == token])

    async def get(self, request: Request, token: str) -> Response:
        return JSONResponse(self._hook(token, request.path_params["id"]).as_dict())

    async def delete(self, request: Request, token: str) -> Response:
        hook = self._hook(token, request.path_params["id"])
        del self._hooks[hook.id]
        return JSONResponse({**hook.as_dict(), "deleted": True})


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _hook_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))
