"""The shapes of the official Emites-Client schema and examples (issue 18): integer codes or
their digit strings, `""` in optional texts without a minimum length, foreign customers; and a
property: a document valid under the official schema's types is accepted, or refused for a
fiscal reason the answer names."""

from __future__ import annotations

import copy
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notaflow.brdocs import UFS
from notaflow.errors import InvalidDocument
from notaflow.nfce import normalize_nfce, omitted_fields
from notaflow.sandbox import emites_rules as rules
from testkit.nfce_documents import (
    EMPTY_OPTIONAL_TEXTS,
    FOREIGN_ID,
    OFFICIAL_SHAPES,
    codes_as_digit_strings,
    codes_as_numbers,
    empty_optional_texts,
    foreign_customer_mfe,
    full_request,
    international_with_address,
)


def _error(document: object) -> InvalidDocument:
    with pytest.raises(InvalidDocument) as caught:
        normalize_nfce(document)
    return caught.value


@pytest.mark.parametrize("shape", sorted(OFFICIAL_SHAPES))
def test_every_official_shape_passes_the_door_and_emites(shape: str) -> None:
    doc = normalize_nfce(OFFICIAL_SHAPES[shape]())
    assert rules.validation_errors(doc) == {}
    assert rules.sefaz_rejection(doc) is None


def test_codes_as_digit_strings_go_on_the_wire_as_integers() -> None:
    doc = normalize_nfce(codes_as_digit_strings())
    assert doc == normalize_nfce(codes_as_numbers())
    endereco = doc["cliente"]["endereco"]
    assert (endereco["codigo_municipio"], endereco["codigo_pais"]) == (5300108, 1058)
    assert doc["indicador_presenca"] == 1 and doc["produtos"][0]["num_item_pedido"] == 1
    assert doc["forma_pagamento"][0]["cartao"]["tipo_integracao"] == 1


def test_empty_optional_texts_are_omitted_and_listed() -> None:
    raw = empty_optional_texts()
    doc = normalize_nfce(raw)
    assert set(omitted_fields(raw)) == {*EMPTY_OPTIONAL_TEXTS, "produtos.0.informacoes_adicionais"}
    assert "complemento" not in doc["cliente"]["endereco"]
    assert "informacoes_fisco" not in doc["informacoes_adicionais"]
    assert "informacoes_adicionais" not in doc["produtos"][0]
    assert not omitted_fields(doc)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("cliente.email", "não pode ser vazio"),  # a pattern: "" is not an e-mail
        ("cliente.endereco.cep", "não pode ser vazio"),
        ("produtos.0.cest", "não pode ser vazio"),
        ("cliente.endereco.logradouro", "não informado"),  # required, minimum 2
        ("produtos.0.descricao", "não informado"),
    ],
)
def test_empty_is_still_refused_where_the_official_schema_has_a_minimum(
    path: str, words: str
) -> None:
    raw = codes_as_numbers()
    holder: Any = raw
    *parents, last = path.split(".")
    for part in parents:
        holder = holder[int(part)] if part.isdigit() else holder[part]
    holder[last] = ""
    error = _error(raw)
    assert error.field == path and words in error.message


def test_foreign_customer_is_kept_as_sent() -> None:
    doc = normalize_nfce(foreign_customer_mfe())
    assert doc["cliente"]["cpf_cnpj"] == FOREIGN_ID
    assert doc["forma_pagamento"][0]["cartao"]["tp_moeda"] == "USD"
    doc = normalize_nfce(international_with_address())
    assert doc["cliente"]["cpf_cnpj"] == "123456"
    assert doc["cliente"]["endereco"]["uf"] == "EX"


@pytest.mark.parametrize(
    ("kind", "number", "words"),
    [
        ("foreign", "1234", "de 5 a 20 letras ou dígitos"),
        ("foreign", "A" * 21, "de 5 a 20 letras ou dígitos"),
        ("foreign", "AB-12345", "de 5 a 20 letras ou dígitos"),
        ("person", "07504505000132", "informe o CPF"),
        ("person", "02558352483", "CPF com dígito verificador inválido"),
        ("company", "02558352482", "informe o CNPJ"),
        (None, "123456", 'com "pessoa_fisica_juridica": "foreign"'),
        (None, "025.583.524-83", "CPF com dígito verificador inválido"),
    ],
)
def test_customer_document_by_person_type(kind: str | None, number: str, words: str) -> None:
    raw = foreign_customer_mfe()
    raw["cliente"]["cpf_cnpj"] = number
    raw["cliente"]["pessoa_fisica_juridica"] = kind
    error = _error(raw)
    assert error.field == "cliente.cpf_cnpj" and words in error.message


def test_a_foreign_customer_needs_no_brazilian_document_check() -> None:
    # 11 digits that are no valid CPF are still a valid foreign id.
    raw = foreign_customer_mfe()
    raw["cliente"]["cpf_cnpj"] = "02558352483"
    assert normalize_nfce(raw)["cliente"]["cpf_cnpj"] == "02558352483"


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("cliente.endereco.codigo_municipio", 5300109, "código IBGE de município inválido"),
        ("cliente.endereco.codigo_municipio", 530010, "deve ter 7 dígitos"),
        ("cliente.endereco.codigo_municipio", "53001O8", "deve ter 7 dígitos"),
        ("cliente.endereco.codigo_municipio", True, "deve ser um número inteiro"),
        ("cliente.endereco.codigo_pais", 10580, "de 1 a 4 dígitos"),
        ("cliente.endereco.codigo_pais", "BR", "de 1 a 4 dígitos"),
        ("transporte.endereco_entrega.codigo_municipio", 5300109, "código IBGE"),
        ("transporte.endereco_entrega.uf", "XX", "UF inexistente"),
        ("lista_autorizacao", ["77184642539"], "CPF com dígito verificador inválido"),
        ("lista_autorizacao", ["123456789012"], "informe o CPF (11 dígitos) ou o CNPJ"),
        ("produtos.0.informacoes_adicionais", "x" * 121, "tamanho máximo 120"),
    ],
)
def test_codes_and_new_groups_name_the_field(path: str, value: Any, words: str) -> None:
    raw = full_request()
    holder: Any = raw
    *parents, last = path.split(".")
    for part in parents:
        holder = holder[int(part)] if part.isdigit() else holder[part]
    holder[last] = value
    error = _error(raw)
    assert error.field.startswith(path), error
    assert words in error.message, error.message


# --- the sandbox decides a foreign customer as SEFAZ would ---------------------------------


def _sefaz(document: dict[str, Any]) -> str | None:
    rejection = rules.sefaz_rejection(normalize_nfce(document))
    return rejection[:3] if rejection else None


def test_sefaz_rules_for_the_customer() -> None:
    assert _sefaz(foreign_customer_mfe()) is None
    assert _sefaz(international_with_address()) == "511"
    assert _sefaz({**codes_as_numbers(), "destino_operacao": 3}) == "707"
    assert _sefaz({**foreign_customer_mfe(), "indicador_presenca": 2}) == "722"
    assert _sefaz({**foreign_customer_mfe(), "indicador_consumidor_final": 0}) == "723"
    abroad_without_country = international_with_address()
    del abroad_without_country["cliente"]["endereco"]["codigo_pais"]
    abroad_without_country["cliente"]["endereco"]["codigo_municipio"] = 5300108
    assert _sefaz(abroad_without_country) == "509"
    assert (
        rules.sefaz_rejection(
            {
                **foreign_customer_mfe(),
                "cliente": {
                    "pessoa_fisica_juridica": "foreign",
                    "cpf_cnpj": "AB-1234",
                    "nome": "X Y",
                },
            }
        )
        == rules.REJEICAO_ID_ESTRANGEIRO
    )


def test_the_sandbox_refuses_any_empty_string_like_emites() -> None:
    erros = rules.validation_errors(empty_optional_texts())
    assert erros == {
        "cliente.endereco.complemento": ["não pode ser vazio"],
        "cliente.endereco.nome_pais": ["não pode ser vazio"],
        "informacoes_adicionais.informacoes_fisco": ["não pode ser vazio"],
        "produtos[0].informacoes_adicionais": ["não pode ser vazio"],
        "produtos[0].num_pedido": ["não pode ser vazio"],
    }


def test_the_sandbox_sums_the_official_outras_despesas() -> None:
    doc = normalize_nfce(codes_as_numbers())
    doc["produtos"][0]["outras_despesas"] = 5.0
    assert rules.sefaz_rejection(doc) == rules.REJEICAO_PAGAMENTO


# --- property: the official schema's types ---------------------------------------------------

LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
VALID_CPFS = ["02558352482", "77184642538", "51966818092"]
VALID_CNPJS = ["07504505000132", "51916585000125", "22769530000131", "81043396000156"]
VALID_IBGE = [3550308, 3304557, 4106902, 3516200, 5300108, 3170206]
# What a refusal of such a document may say: a fiscal check, never a shape the schema allows.
FISCAL_REASONS = (
    "dígito verificador inválido",
    "código IBGE de município inválido",
    "UF inexistente",
)


def _text(low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(LATIN1, min_size=low, max_size=high)


def _optional_text(high: int) -> st.SearchStrategy[str]:
    return st.just("") | _text(1, high)  # no minimum length in the official schema


def _code(values: list[int]) -> st.SearchStrategy[int | str]:
    return st.sampled_from(values).flatmap(lambda v: st.sampled_from([v, str(v)]))


def _digits(size: int) -> st.SearchStrategy[str]:
    return st.text(string.digits, min_size=size, max_size=size)


def _maybe(document: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        document[key] = value


@st.composite
def _customer(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["person", "company", "foreign", None]))
    if kind == "foreign":
        number = draw(st.from_regex(r"\A[0-9A-Z]{5,20}\Z"))
    elif kind == "person" or (kind is None and draw(st.booleans())):
        number = draw(st.sampled_from(VALID_CPFS) | _digits(11))
    else:
        number = draw(st.sampled_from(VALID_CNPJS) | _digits(14))
    cliente: dict[str, Any] = {"cpf_cnpj": number, "nome": draw(_text(2, 60))}
    _maybe(cliente, "pessoa_fisica_juridica", kind)
    _maybe(cliente, "email", draw(st.none() | st.from_regex(r"\A[a-z]{1,10}@[a-z]{1,10}\.br\Z")))
    if draw(st.booleans()):
        abroad = kind == "foreign" and draw(st.booleans())
        endereco = {
            "logradouro": draw(_text(2, 60)),
            "numero": draw(_text(1, 60)),
            "complemento": draw(_optional_text(60)),
            "bairro": draw(_text(2, 60)),
            "codigo_municipio": 9999999
            if abroad
            else draw(st.sampled_from(VALID_IBGE) | st.integers(1000000, 9999999)),
            "nome_municipio": draw(_text(2, 60)),
            "cep": draw(_digits(8)),
            "uf": "EX"
            if abroad
            else draw(st.sampled_from(sorted(UFS)) | st.from_regex(r"\A[A-Z]{2}\Z")),
            "codigo_pais": draw(st.integers(1, 9999) | st.integers(1, 9999).map(str)),
            "nome_pais": draw(_optional_text(60)),
            "telefone": draw(st.from_regex(r"\A[0-9]{6,14}\Z")),
        }
        if isinstance(endereco["codigo_municipio"], int) and draw(st.booleans()):
            endereco["codigo_municipio"] = str(endereco["codigo_municipio"])
        cliente["endereco"] = endereco
    return cliente


@st.composite
def _product(draw: st.DrawFn) -> dict[str, Any]:
    quantity = draw(st.integers(1, 50))
    unit = draw(st.integers(0, 10_000)) / 100
    produto: dict[str, Any] = {
        "ncm": draw(st.just("00") | _digits(8)),
        "codigo_produto": draw(_text(1, 60)),
        "descricao": draw(_text(1, 120)),
        "codigo_ean": draw(st.just("SEM GTIN") | _digits(8) | _digits(13)),
        "informacoes_adicionais": draw(_optional_text(120)),
        "num_item_pedido": draw(st.integers(1, 999) | st.integers(1, 999).map(str)),
        "num_pedido": draw(_optional_text(15)),
        "codigo_origem_produto": draw(_code(list(range(9)))),
        "quantidade_comercial": quantity,
        "quantidade_tributavel": quantity,
        "unidade_comercial": draw(_text(1, 6)),
        "unidade_tributavel": draw(_text(1, 6)),
        "valor_total_produto": quantity * unit,
        "valor_unitario_comercial": unit,
        "valor_unitario_tributario": unit,
        "fabricacao": draw(_code([0, 1])),
    }
    _maybe(produto, "cest", draw(st.none() | _digits(7)))
    _maybe(produto, "cfop", draw(st.none() | _digits(4)))
    return produto


@st.composite
def _payment(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["01", "02", "03", "04", "05", "10", "11", "12", "13", "14",
                                 "15", "90", "99"]))  # fmt: skip
    payment: dict[str, Any] = {
        "tipo_de_pagamento": kind,
        "valor_do_pagamento": draw(st.integers(0, 100_000)) / 100,
        "modalidade": draw(_code([0, 1])),
    }
    if kind in ("03", "04"):
        payment["cartao"] = {
            "tipo_integracao": draw(_code([1, 2])),
            "numero_autorizacao_operacao": draw(_text(1, 20)),
            "cnpj_credenciadora": draw(st.sampled_from(VALID_CNPJS) | _digits(14)),
            "bandeira_operadora": draw(st.sampled_from(["01", "02", "06", "99"])),
            "merchant_id": draw(_optional_text(20)),
            "tp_moeda": draw(st.sampled_from(["BRL", "USD", ""])),
        }
    return payment


@st.composite
def official_documents(draw: st.DrawFn) -> dict[str, Any]:
    document: dict[str, Any] = {
        "natureza_operacao": draw(_text(1, 60)),
        "destino_operacao": draw(_code([1, 2, 3])),
        "finalidade_nfe": draw(_code([1, 2, 3, 4])),
        "indicador_consumidor_final": draw(_code([0, 1])),
        "indicador_presenca": draw(_code([0, 1, 2, 3, 4, 5, 9])),
        "tipo_impressao": draw(_code([0, 1, 2, 3, 4, 5])),
        "tipo_operacao": draw(_code([0, 1])),
        "forma_de_pagamento": draw(st.lists(_payment(), min_size=1, max_size=3)),
        "produtos": draw(st.lists(_product(), min_size=1, max_size=3)),
        "transporte": {"codigo_modalidade": draw(_code([0, 1, 2, 3, 4, 9]))},
        "informacoes_adicionais": {
            "informacoes_contribuinte": draw(_optional_text(2000)),
            "informacoes_fisco": draw(_optional_text(2000)),
        },
    }
    _maybe(document, "cliente", draw(st.none() | _customer()))
    return document


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=official_documents())
def test_official_types_are_accepted_or_refused_for_a_named_fiscal_reason(
    document: dict[str, Any],
) -> None:
    sent = copy.deepcopy(document)
    try:
        doc = normalize_nfce(document)
    except InvalidDocument as error:
        assert error.field and f'"{error.field}"' in error.message
        assert any(reason in error.message for reason in FISCAL_REASONS), error.message
        return
    assert document == sent  # the client's document is not touched
    # What goes to Emites-Client is what Emites-Client takes, with no "" left in it...
    assert rules.validation_errors(doc) == {}
    assert not omitted_fields(doc)
    # ...and every value the client sent is there, but the "" the answer lists as omitted.
    omitted = set(omitted_fields(sent))
    assert normalize_nfce(copy.deepcopy(doc)) == doc
    for path in omitted:
        *parents, last = path.replace("forma_de_pagamento", "forma_pagamento").split(".")
        holder: Any = doc
        for part in parents:
            holder = holder[int(part)] if part.isdigit() else holder[part]
        assert last not in holder
