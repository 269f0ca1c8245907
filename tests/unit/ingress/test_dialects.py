"""Each dialect object renders the body errors and the app's own errors exactly as the routes
answered them before there was one object per dialect: the bytes, the status and the headers
below are those answers, so a change of wording or shape in any dialect fails here first."""

from __future__ import annotations

import pytest

from notaflow.errors import IngressError
from notaflow.ingress.body import BodyError, BodyNotJson, BodyTooLarge
from notaflow.ingress.dialects import (
    FOCUS,
    HUBSOFT,
    HUBSOFT_FINANCEIRO,
    WURO,
    Dialect,
    FinanceiroError,
    FocusError,
    HubsoftError,
    WuroError,
    for_path,
    render,
)

LIMIT = 1000
TOO_LARGE, WRONG_TYPE, NOT_JSON = BodyTooLarge(), BodyNotJson(True), BodyNotJson(False)


def answer(error: IngressError) -> tuple[int, bytes, dict[str, str]]:
    response = render(error)
    headers = {k: v for k, v in response.headers.items() if k not in ("content-length",)}
    return response.status_code, bytes(response.body), headers


JSON = {"content-type": "application/json"}

BODY_ERRORS: list[tuple[Dialect, BodyError, int, bytes]] = [
    (FOCUS, TOO_LARGE, 413, '{"codigo":"requisicao_invalida","mensagem":'
     '"Corpo da requisição maior que o limite de 1000 bytes"}'.encode()),
    (FOCUS, WRONG_TYPE, 415,
     b'{"codigo":"requisicao_invalida","mensagem":"Envie o corpo em JSON"}'),
    (FOCUS, NOT_JSON, 400, '{"codigo":"requisicao_invalida","mensagem":'
     '"O corpo da requisição não é um JSON válido"}'.encode()),
    (HUBSOFT, TOO_LARGE, 413,
     '{"status":"error","msg":"Corpo da requisição grande demais"}'.encode()),
    (HUBSOFT, WRONG_TYPE, 400,
     '{"status":"error","msg":"O corpo da requisição deve ser um JSON válido"}'.encode()),
    (HUBSOFT, NOT_JSON, 400,
     '{"status":"error","msg":"O corpo da requisição deve ser um JSON válido"}'.encode()),
    (HUBSOFT_FINANCEIRO, TOO_LARGE, 413, '{"status":"error","msg":"Corpo da requisição grande '
     'demais","errors":["Corpo da requisição grande demais"]}'.encode()),
    (HUBSOFT_FINANCEIRO, WRONG_TYPE, 400, '{"status":"error","msg":"O corpo da requisição deve '
     'ser um JSON válido","errors":["O corpo da requisição deve ser um JSON válido"]}'.encode()),
    (HUBSOFT_FINANCEIRO, NOT_JSON, 400, '{"status":"error","msg":"O corpo da requisição deve '
     'ser um JSON válido","errors":["O corpo da requisição deve ser um JSON válido"]}'.encode()),
    (WURO, TOO_LARGE, 413,
     b'{"error":{"code":"invalid_request","message":"Body too large"}}'),
    (WURO, WRONG_TYPE, 400,
     b'{"error":{"code":"invalid_request","message":"Body must be JSON"}}'),
    (WURO, NOT_JSON, 400,
     b'{"error":{"code":"invalid_request","message":"Body must be JSON"}}'),
]  # fmt: skip


@pytest.mark.parametrize(("dialect", "error", "status", "body"), BODY_ERRORS)
def test_body_errors_render_as_each_dialect_always_answered(
    dialect: Dialect, error: BodyError, status: int, body: bytes
) -> None:
    assert answer(dialect.body_error(error, LIMIT)) == (status, body, JSON)


GENERIC: list[tuple[int, str, bytes, bytes, bytes]] = [
    (404, "Not Found",
     '{"codigo":"nao_encontrado","mensagem":"Recurso não encontrado"}'.encode(),
     '{"status":"error","msg":"Recurso não encontrado"}'.encode(),
     '{"error":{"code":"not_found","message":"Recurso não encontrado"}}'.encode()),
    (405, "Method Not Allowed",
     '{"codigo":"metodo_nao_permitido","mensagem":"Método HTTP não permitido"}'.encode(),
     '{"status":"error","msg":"Método HTTP não permitido"}'.encode(),
     '{"error":{"code":"method_not_allowed","message":"Método HTTP não permitido"}}'.encode()),
    (500, "",
     b'{"codigo":"erro_interno","mensagem":"Erro interno. Tente novamente mais tarde."}',
     b'{"status":"error","msg":"Erro interno. Tente novamente mais tarde."}',
     b'{"error":{"code":"internal_error","message":"Erro interno. Tente novamente mais '
     b'tarde."}}'),
    (503, "",
     '{"codigo":"servico_indisponivel","mensagem":"Serviço temporariamente indisponível. '
     'Tente novamente em instantes."}'.encode(),
     '{"status":"error","msg":"Serviço temporariamente indisponível. Tente novamente em '
     'instantes."}'.encode(),
     '{"error":{"code":"service_unavailable","message":"Serviço temporariamente '
     'indisponível. Tente novamente em instantes."}}'.encode()),
    (400, "Caractere NUL (%00) na URL",
     b'{"codigo":"requisicao_invalida","mensagem":"Caractere NUL (%00) na URL"}',
     b'{"status":"error","msg":"Caractere NUL (%00) na URL"}',
     b'{"error":{"code":"invalid_request","message":"Caractere NUL (%00) na URL"}}'),
]  # fmt: skip


@pytest.mark.parametrize(("status", "detail", "focus", "hubsoft", "wuro"), GENERIC)
def test_generic_errors_render_in_the_dialect_of_the_path(
    status: int, detail: str, focus: bytes, hubsoft: bytes, wuro: bytes
) -> None:
    for path, body in [
        ("/v2/nfse/x", focus),
        ("/v2/nfce", focus),
        ("/", focus),
        ("/api/v1/integracao/cliente/nota_fiscal/enviar_email", hubsoft),
        # The app's own answers are the plain HubSoft shape on the billing paths too.
        ("/api/v1/integracao/faturas/eventos", hubsoft),
        ("/api/v3.2/invoice/u/mail", wuro),
    ]:
        assert answer(for_path(path).generic(status, detail)) == (status, body, JSON), path


def test_focus_domain_helpers_keep_their_codes_and_the_retry_after() -> None:
    assert answer(FOCUS.invalid("x")) == (
        400, b'{"codigo":"requisicao_invalida","mensagem":"x"}', JSON,
    )  # fmt: skip
    assert answer(FOCUS.not_found()) == (
        404, '{"codigo":"nao_encontrado","mensagem":"Nota fiscal não encontrada"}'.encode(), JSON
    )  # fmt: skip
    status, body, headers = answer(FOCUS.unavailable())
    assert (status, headers["retry-after"]) == (503, "5")
    assert body.startswith(b'{"codigo":"servico_indisponivel","mensagem":')
    erros = FocusError(422, "erro_validacao", "m", erros=[{"campo": "a"}])
    assert answer(erros)[1] == b'{"codigo":"erro_validacao","mensagem":"m","erros":[{"campo":"a"}]}'


def test_every_dialect_error_is_an_ingress_error_of_the_one_tree() -> None:
    for error in (FocusError(400, "c", "m"), HubsoftError(400, "m"), FinanceiroError(400, "m"),
                  WuroError(400, "c", "m")):  # fmt: skip
        assert isinstance(error, IngressError)
        assert not error.retriable
    for dialect in (FOCUS, HUBSOFT, HUBSOFT_FINANCEIRO, WURO):
        for body_error in (TOO_LARGE, WRONG_TYPE, NOT_JSON):
            assert isinstance(dialect.body_error(body_error, LIMIT), IngressError)
    assert isinstance(HUBSOFT_FINANCEIRO.body_error(TOO_LARGE, LIMIT), FinanceiroError)
    assert type(HUBSOFT.body_error(TOO_LARGE, LIMIT)) is HubsoftError


class _Chunks:
    """The `read` of a raw ASGI handler: counts how often the body was read."""

    def __init__(self, body: bytes) -> None:
        self.body, self.reads = body, 0

    async def __call__(self, limit: int) -> bytes:
        self.reads += 1
        if len(self.body) > limit:
            raise BodyTooLarge
        return self.body


async def test_parse_maps_body_errors_and_refuses_a_type_before_reading() -> None:
    read = _Chunks(b'{"a": 1}')
    assert await FOCUS.parse("application/json", read, LIMIT) == {"a": 1}
    with pytest.raises(WuroError) as info:
        await WURO.parse("multipart/form-data", read, LIMIT)
    assert (info.value.status_code, read.reads) == (400, 1)  # never read
    with pytest.raises(FocusError) as focus:
        await FOCUS.parse("", _Chunks(b"x" * (LIMIT + 1)), LIMIT)
    assert focus.value.status_code == 413
    assert isinstance(focus.value.__cause__, BodyTooLarge)
    with pytest.raises(HubsoftError) as hub:
        await HUBSOFT.parse("text/plain", _Chunks(b"   "), LIMIT)
    assert hub.value.status_code == 400
    assert await FOCUS.parse("", _Chunks(b""), LIMIT, empty={}) == {}


UNAUTHORIZED = {**JSON, "www-authenticate": 'Basic realm="notaflow"'}
SHARED: list[tuple[IngressError, int, bytes, dict[str, str]]] = [
    (FOCUS.missing_credentials(), 401, '{"codigo":"nao_autorizado","mensagem":"Informe o token '
     'de acesso (HTTP Basic: token como usuário, senha vazia)"}'.encode(), UNAUTHORIZED),
    (FOCUS.refused_credentials(), 403, '{"codigo":"permissao_negada","mensagem":"Token '
     'inválido ou sem permissão de acesso"}'.encode(), JSON),
    (FOCUS.unavailable(), 503, '{"codigo":"servico_indisponivel","mensagem":"Serviço '
     'temporariamente indisponível. Tente novamente em instantes com a mesma ref."}'.encode(),
     {**JSON, "retry-after": "5"}),
    (HUBSOFT.missing_credentials(), 401, '{"status":"error","msg":"Token de acesso não '
     'informado (Authorization: Bearer <token>)"}'.encode(), JSON),
    (HUBSOFT.refused_credentials(), 401, '{"status":"error","msg":"Token de acesso inválido, '
     'expirado ou revogado"}'.encode(), JSON),
    (HUBSOFT.unavailable(), 503, '{"status":"error","msg":"Serviço temporariamente '
     'indisponível; tente novamente"}'.encode(), JSON),
    (HUBSOFT_FINANCEIRO.unavailable(), 503, '{"status":"error","msg":"Serviço temporariamente '
     'indisponível; tente novamente","errors":["Serviço temporariamente indisponível; tente '
     'novamente"]}'.encode(), JSON),
    (WURO.missing_credentials(), 401, b'{"error":{"code":"unauthorized","message":"X-APP-ID '
     b'and X-APP-SECRET headers are required"}}', JSON),
    (WURO.refused_credentials(), 401,
     b'{"error":{"code":"unauthorized","message":"Invalid X-APP-ID or X-APP-SECRET"}}', JSON),
    (WURO.unavailable(), 503,
     b'{"error":{"code":"unavailable","message":"Service unavailable; nothing was sent"}}', JSON),
]  # fmt: skip


@pytest.mark.parametrize(("error", "status", "body", "headers"), SHARED)
def test_credentials_and_kafka_outage_render_as_each_dialect_always_answered(
    error: IngressError, status: int, body: bytes, headers: dict[str, str]
) -> None:
    assert answer(error) == (status, body, headers)
