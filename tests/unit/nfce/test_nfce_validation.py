"""notaflow.nfce and schemas/nfce.schema.json: a full document, the bad inputs of the issue,
and the canonical form the consumers send to Emites."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notaflow import schemas
from notaflow.errors import InvalidDocument
from notaflow.nfce import DEFAULTS_DOC, NOT_AN_OBJECT, normalize_nfce, validate_motivo
from notaflow.sandbox import emites_rules
from testkit.nfce_documents import VALID_CNPJ, valid_nfce


def _error(document: object) -> InvalidDocument:
    with pytest.raises(InvalidDocument) as caught:
        normalize_nfce(document)
    return caught.value


def _with(path: str, value: Any) -> dict[str, Any]:
    """valid_nfce() with the value at dotted `path` replaced (the sentinel `...` deletes it)."""
    document = valid_nfce()
    *parents, last = path.split(".")
    holder: Any = document
    for part in parents:
        holder = holder[int(part)] if part.isdigit() else holder[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del holder[key]
    else:
        holder[key] = value
    return document


def test_schema_is_valid_draft_2020_12() -> None:
    schemas.meta_check("nfce")


def test_full_document_passes() -> None:
    doc = normalize_nfce(valid_nfce())
    assert doc["cliente"]["cpf_cnpj"] == "02558352482"  # punctuation dropped
    assert doc["produtos"][1]["descricao"] == "Pão de queijo"
    assert doc["forma_pagamento"][0]["cartao"]["cnpj_credenciadora"] == VALID_CNPJ


def test_defaults_are_filled_in_and_documented() -> None:
    doc = normalize_nfce(valid_nfce())
    assert {field: doc[field] for field, _, _ in DEFAULTS_DOC} == {
        "tipo_operacao": 1,
        "finalidade_nfe": 1,
        "destino_operacao": 1,
        "indicador_consumidor_final": 1,
        "tipo_impressao": 4,
    }
    # The schema declares the same defaults the module applies.
    properties = schemas.load("nfce")["properties"]
    for field, default, why in DEFAULTS_DOC:
        assert properties[field]["default"] == default
        assert why


def test_client_values_win_over_defaults() -> None:
    doc = normalize_nfce(valid_nfce(tipo_operacao=0, tipo_impressao=5, finalidade_nfe=4))
    assert (doc["tipo_operacao"], doc["tipo_impressao"], doc["finalidade_nfe"]) == (0, 5, 4)


def test_null_is_absent_and_gets_the_default() -> None:
    raw = valid_nfce()
    raw["tipo_operacao"] = None
    raw["cliente"]["email"] = None
    raw["produtos"][0]["valor_desconto"] = None
    doc = normalize_nfce(raw)
    assert doc["tipo_operacao"] == 1
    assert "email" not in doc["cliente"]
    assert "valor_desconto" not in doc["produtos"][0]


def test_renamed_payments_come_out_as_forma_pagamento() -> None:
    raw = valid_nfce()
    raw["forma_de_pagamento"] = raw.pop("forma_pagamento")
    doc = normalize_nfce(raw)
    assert "forma_de_pagamento" not in doc
    assert doc["forma_pagamento"] == valid_nfce()["forma_pagamento"]


def test_unknown_fields_are_forwarded() -> None:
    raw = valid_nfce()
    raw["transporte"]["veiculo"] = {"placa": "JKL1234", "uf": "DF"}
    raw["observacao_interna"] = {"loja": 7}
    doc = normalize_nfce(raw)
    assert doc["transporte"]["veiculo"] == {"placa": "JKL1234", "uf": "DF"}
    assert doc["observacao_interna"] == {"loja": 7}


def test_normalizing_twice_changes_nothing() -> None:
    once = normalize_nfce(valid_nfce())
    assert normalize_nfce(copy.deepcopy(once)) == once


def test_the_input_is_not_modified() -> None:
    raw = valid_nfce()
    normalize_nfce(raw)
    assert raw == valid_nfce()


def test_consumer_without_client_is_fine() -> None:
    assert "cliente" not in normalize_nfce(valid_nfce(cliente=None))


# --- the bad inputs of the issue -----------------------------------------------------------

ISSUE_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "no produtos",
        valid_nfce(produtos=None),
        "produtos",
        'Parâmetro "produtos" não informado',
    ),
    (
        "501 products",
        valid_nfce(produtos=valid_nfce()["produtos"][:1] * 501),
        "produtos",
        'Parâmetro "produtos" inválido: deve ter entre 1 e 500 itens',
    ),
    (
        "indicador_presenca 7",
        valid_nfce(indicador_presenca=7),
        "indicador_presenca",
        'Parâmetro "indicador_presenca" inválido: valores aceitos 0, 1, 2, 3, 4, 5, 9',
    ),
    (
        "payment type 06",
        _with("forma_pagamento.0.tipo_de_pagamento", "06"),
        "forma_pagamento.0.tipo_de_pagamento",
        'Parâmetro "forma_pagamento.0.tipo_de_pagamento" inválido: valores aceitos "01", "02", '
        '"03", "04", "05", "10", "11", "12", "13", "14", "15", "90", "99"',
    ),
    (
        "empty optional e-mail",
        _with("cliente.email", ""),
        "cliente.email",
        'Parâmetro "cliente.email" inválido: não pode ser vazio; omita o campo ou envie null',
    ),
    (
        "empty optional cest",
        _with("produtos.1.cest", ""),
        "produtos.1.cest",
        'Parâmetro "produtos.1.cest" inválido: não pode ser vazio; omita o campo ou envie null',
    ),
    (
        "empty item of an unknown list",
        _with("transporte.lacres", ["L1", ""]),
        "transporte.lacres.1",
        'Parâmetro "transporte.lacres.1" inválido: não pode ser vazio; omita o campo ou envie null',
    ),
    (
        "CPF with a bad check digit",
        _with("cliente.cpf_cnpj", "025.583.524-83"),
        "cliente.cpf_cnpj",
        'Parâmetro "cliente.cpf_cnpj" inválido: CPF com dígito verificador inválido',
    ),
    (
        "CNPJ with a bad check digit",
        _with("cliente.cpf_cnpj", "22.769.530/0001-32"),
        "cliente.cpf_cnpj",
        'Parâmetro "cliente.cpf_cnpj" inválido: CNPJ com dígito verificador inválido',
    ),
]


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [case[1:] for case in ISSUE_CASES],
    ids=[case[0] for case in ISSUE_CASES],
)
def test_issue_bad_inputs_name_the_field(
    document: dict[str, Any], field: str, message: str
) -> None:
    error = _error(document)
    assert (error.field, error.message) == (field, message)


@pytest.mark.parametrize(
    ("document", "field"),
    [case[1:3] for case in ISSUE_CASES],
    ids=[case[0] for case in ISSUE_CASES],
)
def test_the_sandbox_rejects_the_issue_bad_inputs_too(document: dict[str, Any], field: str) -> None:
    # An independent implementation over the same schema file agrees on what is wrong.
    erros = emites_rules.validation_errors(document)
    assert erros, field
    java_field = re.sub(r"\.(\d+)", r"[\1]", field)
    assert java_field in erros


# --- more rules ---------------------------------------------------------------------------

MORE_CASES: list[tuple[dict[str, Any], str, str]] = [
    (valid_nfce(natureza_operacao=""), "natureza_operacao", "não informado"),
    (valid_nfce(natureza_operacao="x" * 61), "natureza_operacao", "entre 1 e 60 caracteres"),
    (valid_nfce(transporte=None), "transporte", "não informado"),
    (valid_nfce(transporte={"codigo_modalidade": 5}), "transporte.codigo_modalidade", "0, 1"),
    (valid_nfce(forma_pagamento=None), "forma_pagamento", "não informado"),
    (valid_nfce(forma_pagamento=[]), "forma_pagamento", "deve ter entre 1 e 100 itens"),
    (
        valid_nfce(forma_pagamento=valid_nfce()["forma_pagamento"] * 101),
        "forma_pagamento",
        "deve ter entre 1 e 100 itens",
    ),
    (
        valid_nfce(forma_de_pagamento=valid_nfce()["forma_pagamento"]),
        "forma_pagamento",
        'informe "forma_pagamento" ou "forma_de_pagamento", não ambos',
    ),
    (valid_nfce(tipo_operacao="2"), "tipo_operacao", "valores aceitos 0, 1"),
    (valid_nfce(tipo_operacao=True), "tipo_operacao", "valores aceitos 0, 1"),
    (valid_nfce(tipo_impressao=6), "tipo_impressao", "valores aceitos 0, 1, 2, 3, 4, 5"),
    (_with("produtos.0.ncm", "2203000X"), "produtos.0.ncm", "NCM deve ter de 2 a 8 dígitos"),
    (_with("produtos.0.ncm", ...), "produtos.0.ncm", "não informado"),
    (_with("produtos.0.cfop", "510"), "produtos.0.cfop", "CFOP deve ter 4 dígitos"),
    (_with("produtos.0.codigo_ean", "123"), "produtos.0.codigo_ean", "SEM GTIN"),
    (_with("produtos.0.codigo_origem_produto", 9), "produtos.0.codigo_origem_produto", "0, 1"),
    (_with("produtos.0.quantidade_comercial", 0), "produtos.0.quantidade_comercial", "maior que 0"),
    (_with("produtos.0.valor_total_produto", -1), "produtos.0.valor_total_produto", "igual a 0"),
    (_with("produtos.0.descricao", "x" * 121), "produtos.0.descricao", "entre 1 e 120"),
    (_with("produtos.0.unidade_comercial", "UNIDADE"), "produtos.0.unidade_comercial", "1 e 6"),
    (
        _with("produtos.0.valor_unitario_comercial", "10.25"),
        "produtos.0.valor_unitario_comercial",
        "deve ser um número",
    ),
    (_with("cliente.nome", "J"), "cliente.nome", "entre 2 e 60 caracteres"),
    (_with("cliente.nome", ...), "cliente.nome", "não informado"),
    (_with("cliente.email", "jose"), "cliente.email", "não é um endereço de e-mail válido"),
    (_with("cliente.cpf_cnpj", "123"), "cliente.cpf_cnpj", "informe o CPF (11 dígitos)"),
    (_with("cliente.cpf_cnpj", "111.111.111-11"), "cliente.cpf_cnpj", "CPF com dígito"),
    (
        _with("cliente.endereco.codigo_municipio", "5300109"),
        "cliente.endereco.codigo_municipio",
        "código IBGE",
    ),
    (
        _with("cliente.endereco.codigo_municipio", "530010"),
        "cliente.endereco.codigo_municipio",
        "7 dígitos",
    ),
    (_with("cliente.endereco.uf", "XX"), "cliente.endereco.uf", "UF inexistente"),
    (_with("cliente.endereco.uf", "df"), "cliente.endereco.uf", "2 letras maiúsculas"),
    (_with("cliente.endereco.cep", "70355-030"), "cliente.endereco.cep", "CEP deve ter 8 dígitos"),
    (_with("cliente.endereco.logradouro", ""), "cliente.endereco.logradouro", "não informado"),
    (_with("cliente.endereco", "SQS 308"), "cliente.endereco", "deve ser um objeto"),
    (
        _with("forma_pagamento.0.cartao.cnpj_credenciadora", "07504505000133"),
        "forma_pagamento.0.cartao.cnpj_credenciadora",
        "CNPJ com dígito verificador inválido",
    ),
    (
        _with("forma_pagamento.0.cartao.bandeira_operadora", "10"),
        "forma_pagamento.0.cartao.bandeira_operadora",
        '"01", "02"',
    ),
    (
        _with("forma_pagamento.0.cartao.numero_autorizacao_operacao", "1" * 21),
        "forma_pagamento.0.cartao.numero_autorizacao_operacao",
        "entre 1 e 20",
    ),
    (
        _with("informacoes_adicionais.informacoes_fisco", "x" * 2001),
        "informacoes_adicionais.informacoes_fisco",
        "tamanho máximo 2000 caracteres",
    ),
    (
        _with("produtos.1.descricao", "Café ☕"),
        "produtos.1.descricao",
        'contém "☕", caractere fora do ISO-8859-1',
    ),
]


@pytest.mark.parametrize(("document", "field", "words"), MORE_CASES)
def test_more_rules_name_the_field(document: dict[str, Any], field: str, words: str) -> None:
    error = _error(document)
    assert error.field == field
    assert f'"{field}"' in error.message
    assert words in error.message


def test_the_smallest_path_is_reported_whatever_the_field_order() -> None:
    raw = _with("produtos.1.cest", "")
    raw["produtos"][0]["ncm"] = "x"
    raw["indicador_presenca"] = 8
    assert _error(raw).field == "indicador_presenca"
    reordered = dict(reversed(list(raw.items())))
    assert _error(reordered).field == "indicador_presenca"


def test_array_indices_compare_as_numbers() -> None:
    produtos = valid_nfce()["produtos"][:1] * 12
    produtos = [dict(p) for p in produtos]
    produtos[10]["ncm"] = "x"
    produtos[2]["ncm"] = "y"
    assert _error(valid_nfce(produtos=produtos)).field == "produtos.2.ncm"


@pytest.mark.parametrize("raw", [None, [], "texto", 1])
def test_not_an_object(raw: object) -> None:
    assert _error(raw).message == NOT_AN_OBJECT


def test_lone_surrogate_is_refused() -> None:
    error = _error(_with("cliente.nome", "Jo\ud800"))
    assert error.field in ("", "cliente.nome")


# --- validate_motivo ----------------------------------------------------------------------


def test_motivo_from_justificativa_trimmed() -> None:
    assert validate_motivo({"justificativa": "  Desistência do comprador  "}) == (
        "Desistência do comprador"
    )


@pytest.mark.parametrize("body", [{}, {"justificativa": None}])
def test_motivo_is_optional(body: dict[str, Any]) -> None:
    assert validate_motivo(body) is None


@pytest.mark.parametrize("value", ["", "curto", "   curto demais   ", "x" * 14, "x" * 256])
def test_motivo_length_is_15_to_255(value: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_motivo({"justificativa": value})
    assert caught.value.field == "justificativa"
    assert "entre 15 e 255 caracteres" in caught.value.message


@pytest.mark.parametrize("value", ["x" * 15, "x" * 255])
def test_motivo_bounds_are_inclusive(value: str) -> None:
    assert validate_motivo({"justificativa": value}) == value


def test_motivo_must_be_text_in_latin1() -> None:
    with pytest.raises(InvalidDocument, match="deve ser um texto"):
        validate_motivo({"justificativa": 123456789012345})
    with pytest.raises(InvalidDocument, match="ISO-8859-1"):
        validate_motivo({"justificativa": "Cliente desistiu — sem troca"})
    with pytest.raises(InvalidDocument) as caught:
        validate_motivo(["justificativa"])
    assert caught.value.message == NOT_AN_OBJECT


# --- properties ---------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.floats()


@settings(max_examples=150, deadline=None)
@given(
    field=st.sampled_from(
        [
            "natureza_operacao",
            "indicador_presenca",
            "tipo_operacao",
            "produtos.0.ncm",
            "produtos.1.quantidade_comercial",
            "forma_pagamento.0.valor_do_pagamento",
            "forma_pagamento.0.cartao",
            "cliente.cpf_cnpj",
            "cliente.endereco.uf",
            "transporte.codigo_modalidade",
        ]
    ),
    value=scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=3), scalars),
)
def test_any_value_anywhere_is_accepted_or_named(field: str, value: Any) -> None:
    try:
        doc = normalize_nfce(_with(field, value))
    except InvalidDocument as error:
        assert error.message.startswith(("Parâmetro", "O corpo"))
        assert error.field == "" or f'"{error.field}"' in error.message
    else:
        assert normalize_nfce(copy.deepcopy(doc)) == doc
        assert emites_rules.validation_errors(doc) == {}
