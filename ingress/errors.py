"""The error tree of the ingress, rendered in one place per dialect.

    IngressError               (status code + the dialect's body)
    └── FocusError             Focus NFe dialect: {"codigo", "mensagem", "erros"?}

Handlers raise; `ingress.app` turns each error into its dialect's response. Core errors
(`InvalidDocument`, `BusUnavailable`, `RefInUse`) are mapped to these at the route.
"""

from __future__ import annotations

from typing import Any

from notaflow.ingress.responses import FastJSONResponse as JSONResponse


class IngressError(Exception):
    status_code = 500

    def response(self) -> JSONResponse:
        raise NotImplementedError


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

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"codigo": self.codigo, "mensagem": self.mensagem}
        if self.erros:
            body["erros"] = self.erros
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


def invalid(mensagem: str) -> FocusError:
    return FocusError(400, "requisicao_invalida", mensagem)


def not_found() -> FocusError:
    return FocusError(404, "nao_encontrado", "Nota fiscal não encontrada")


def unavailable() -> FocusError:
    return FocusError(
        503,
        "servico_indisponivel",
        # Not "nothing was recorded": Kafka may have stored a command whose ack never came
        # back. Retrying with the same ref is always safe (at worst a 422 em_processamento).
        "Serviço temporariamente indisponível. Tente novamente em instantes com a mesma ref.",
        headers={"Retry-After": "5"},
    )
