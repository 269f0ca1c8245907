"""The API dialects' errors: one object per dialect renders everything the ingress refuses in
the shape its clients parse, so a route of a dialect, the hot route and the app's own answers
(no route matched, a refused URL, a database outage, a bug) cannot drift apart.

    FOCUS     Focus NFe (`/v2/...`, NFC-e routes too): {"codigo", "mensagem", "erros"?}
    HUBSOFT   HubSoft (`/api/v1/...`): {"status": "error", "msg"}; its billing routes
              (seed 004, HUBSOFT_FINANCEIRO) add "errors": [...]
    WURO      Wuro (`/api/v3.2/...`): {"error": {"code", "message"}}

Each renders three kinds of error:
- body errors (`BodyTooLarge`, `BodyNotJson`), read through `dialect.json` / `dialect.parse`;
- generic errors: those the routes do not raise (`dialect.generic(status, detail)`: 404, 405,
  500, 503, a NUL in the URL), chosen by path with `for_path`, and those every route of the
  dialect raises alike (`missing_credentials`, `refused_credentials`, `unavailable`: Kafka did
  not acknowledge);
- domain errors, raised by the routes as the dialect's error class (`FocusError`, ...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from notaflow.errors import IngressError
from notaflow.ingress.body import (
    BodyError,
    BodyNotJson,
    BodyTooLarge,
    check_json_type,
    parse_json,
    read_json,
)
from notaflow.ingress.responses import FastJSONResponse


def render(exc: IngressError) -> FastJSONResponse:
    """The response of a refusal: its status, its headers, its dialect's body."""
    return FastJSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


class FocusError(IngressError):
    def __init__(
        self,
        status_code: int,
        codigo: str,
        mensagem: str,
        erros: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{codigo}: {mensagem}")
        self.status_code = status_code
        self.codigo = codigo
        self.mensagem = mensagem
        self.erros = erros
        self.headers = headers

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"codigo": self.codigo, "mensagem": self.mensagem}
        if self.erros:
            body["erros"] = self.erros
        return body


class HubsoftError(IngressError):
    def __init__(self, status_code: int, msg: str) -> None:
        super().__init__(msg)
        self.status_code = status_code
        self.msg = msg

    def body(self) -> dict[str, Any]:
        return {"status": "error", "msg": self.msg}


class FinanceiroError(HubsoftError):
    def __init__(self, status_code: int, msg: str, errors: list[str] | None = None) -> None:
        super().__init__(status_code, msg)
        self.errors = errors if errors is not None else [msg]

    def body(self) -> dict[str, Any]:
        return {"status": "error", "msg": self.msg, "errors": self.errors}


class WuroError(IngressError):
    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


# Per status, the message of what the ingress answers itself (no route matched, a refused URL,
# a bug), with Focus's `codigo` and Wuro's `code`; any other status carries the detail given.
_GENERIC: dict[int, tuple[str, str, str]] = {
    404: ("Recurso não encontrado", "nao_encontrado", "not_found"),
    405: ("Método HTTP não permitido", "metodo_nao_permitido", "method_not_allowed"),
    500: ("Erro interno. Tente novamente mais tarde.", "erro_interno", "internal_error"),
    503: (
        "Serviço temporariamente indisponível. Tente novamente em instantes.",
        "servico_indisponivel",
        "service_unavailable",
    ),
}


def _generic(status: int, detail: str) -> tuple[str, str, str]:
    return _GENERIC.get(status, (detail, "requisicao_invalida", "invalid_request"))


class Dialect:
    """What every dialect renders; the subclasses say how."""

    def body_error(self, exc: BodyError, limit: int) -> IngressError:
        raise NotImplementedError

    def generic(self, status: int, detail: str) -> IngressError:
        raise NotImplementedError

    def missing_credentials(self) -> IngressError:
        raise NotImplementedError

    def refused_credentials(self) -> IngressError:
        """An unknown and a revoked credential alike: nothing says which tenants exist."""
        raise NotImplementedError

    def unavailable(self) -> IngressError:
        raise NotImplementedError

    async def parse(
        self,
        content_type: str,
        read: Callable[[int], Awaitable[bytes]],
        limit: int,
        empty: Any = None,
    ) -> Any:
        """`body.read_json` for a raw ASGI handler (`read` takes the size limit), or this
        dialect's body error. Spelled out rather than delegated to `read_json`: on the hot
        route each coroutine frame costs about 0.4 µs per request."""
        try:
            check_json_type(content_type)
            return parse_json(await read(limit), empty)
        except BodyError as exc:
            raise self.body_error(exc, limit) from exc

    async def json(self, request: Request, limit: int, empty: Any = None) -> Any:
        """`body.read_json` (a route's body), or this dialect's body error."""
        try:
            return await read_json(request, limit, empty)
        except BodyError as exc:
            raise self.body_error(exc, limit) from exc


class Focus(Dialect):
    def body_error(self, exc: BodyError, limit: int) -> FocusError:
        if isinstance(exc, BodyTooLarge):
            return FocusError(
                413,
                "requisicao_invalida",
                f"Corpo da requisição maior que o limite de {limit} bytes",
            )
        if isinstance(exc, BodyNotJson) and exc.unsupported_type:
            return FocusError(415, "requisicao_invalida", "Envie o corpo em JSON")
        return self.invalid("O corpo da requisição não é um JSON válido")

    def generic(self, status: int, detail: str) -> FocusError:
        message, codigo, _code = _generic(status, detail)
        return FocusError(status, codigo, message)

    def missing_credentials(self) -> FocusError:
        return FocusError(
            401,
            "nao_autorizado",
            "Informe o token de acesso (HTTP Basic: token como usuário, senha vazia)",
            headers={"WWW-Authenticate": 'Basic realm="notaflow"'},
        )

    def refused_credentials(self) -> FocusError:
        return FocusError(403, "permissao_negada", "Token inválido ou sem permissão de acesso")

    def invalid(self, mensagem: str) -> FocusError:
        return FocusError(400, "requisicao_invalida", mensagem)

    def not_found(self) -> FocusError:
        return FocusError(404, "nao_encontrado", "Nota fiscal não encontrada")

    def unavailable(self) -> FocusError:
        return FocusError(
            503,
            "servico_indisponivel",
            # Not "nothing was recorded": Kafka may have stored a command whose ack never came
            # back. Retrying with the same ref is always safe (at worst a 422 em_processamento).
            "Serviço temporariamente indisponível. Tente novamente em instantes com a mesma ref.",
            headers={"Retry-After": "5"},
        )


class Hubsoft(Dialect):
    """`error` is the class of the routes' errors: the billing routes (seed 004) list them."""

    def __init__(self, error: type[HubsoftError] = HubsoftError) -> None:
        self.error = error

    def body_error(self, exc: BodyError, limit: int) -> HubsoftError:
        # HubSoft has no 415: a body of another type is "not JSON", as an unparsable one.
        if isinstance(exc, BodyTooLarge):
            return self.error(413, "Corpo da requisição grande demais")
        return self.error(400, "O corpo da requisição deve ser um JSON válido")

    def generic(self, status: int, detail: str) -> HubsoftError:
        # The app's own answers are the plain shape on every HubSoft path.
        return HubsoftError(status, _generic(status, detail)[0])

    # Authentication is shared by every HubSoft route (`hubsoft.bearer_tenant`): plain shape.
    def missing_credentials(self) -> HubsoftError:
        return HubsoftError(401, "Token de acesso não informado (Authorization: Bearer <token>)")

    def refused_credentials(self) -> HubsoftError:
        return HubsoftError(401, "Token de acesso inválido, expirado ou revogado")

    def unavailable(self) -> HubsoftError:
        return self.error(503, "Serviço temporariamente indisponível; tente novamente")


class Wuro(Dialect):
    def body_error(self, exc: BodyError, limit: int) -> WuroError:
        if isinstance(exc, BodyTooLarge):
            return WuroError(413, "invalid_request", "Body too large")
        return WuroError(400, "invalid_request", "Body must be JSON")

    def generic(self, status: int, detail: str) -> WuroError:
        message, _codigo, code = _generic(status, detail)
        return WuroError(status, code, message)

    def missing_credentials(self) -> WuroError:
        return WuroError(401, "unauthorized", "X-APP-ID and X-APP-SECRET headers are required")

    def refused_credentials(self) -> WuroError:
        return WuroError(401, "unauthorized", "Invalid X-APP-ID or X-APP-SECRET")

    def unavailable(self) -> WuroError:
        return WuroError(503, "unavailable", "Service unavailable; nothing was sent")


FOCUS = Focus()
HUBSOFT = Hubsoft()
HUBSOFT_FINANCEIRO = Hubsoft(FinanceiroError)
WURO = Wuro()


def for_path(path: str) -> Dialect:
    """The dialect of a path, for errors no route raised: HubSoft under /api/v1/, Wuro under
    /api/v3.2/, Focus elsewhere."""
    if path.startswith("/api/v1/"):
        return HUBSOFT
    if path.startswith("/api/v3.2/"):
        return WURO
    return FOCUS
