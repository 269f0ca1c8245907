"""notaflow.nfse and schemas/nfse.schema.json: the seed's examples, Focus-style errors, the
quirks clients copy from the seed, and properties over arbitrary input."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notaflow import schemas
from notaflow.errors import InvalidDocument
from notaflow.nfse import (
    DEFAULTS_DOC,
    NOT_AN_OBJECT,
    normalize_nfse,
    validate_justificativa,
    validate_ref,
)
from testkit.seed_examples import JSON_EXAMPLE, PYTHON_EXAMPLE

VALID_CNPJ = "51916585000125"  # valid per shared/specs/focus-nfse.md
VALID_CNPJ_2 = "22769530000131"

# --- the seed's examples, as the body each client sends ------------------------------------

# The JSON and Python examples are shared with the e2e tests and the benchmark.
SEED_JSON: dict[str, Any] = JSON_EXAMPLE

SEED_RUBY: dict[str, Any] = copy.deepcopy(SEED_JSON)

SEED_PYTHON: dict[str, Any] = PYTHON_EXAMPLE

SEED_JAVA: dict[str, Any] = {
    "data_emissao": "2018-01-15T17:40:00",
    "natureza_operacao": "1",
    "prestador": {
        "cnpj": "51916585000125",
        "inscricao_municipal": "123456",
        "codigo_municipio": "4128104",
    },
    "tomador": {
        "cpf": "51966818092",
        "razao_social": "ACME LTDA",
        "email": "email-do-tomador@google.com.br",
        "endereco": {
            "bairro": "Jardim America",
            "cep": "82620150",
            "codigo_municipio": "4106902",
            "logradouro": "Rua Paulo Centrone",
            "numero": "168",
            "uf": "PR",
        },
    },
    "servico": {
        "discriminacao": "Teste de servico",
        "aliquota": "3.00",
        "base_calculo": "1.0",
        "valor_iss": "0",
        "iss_retido": "false",
        "codigo_tributario_municipio": "080101",
        "item_lista_servico": "0801",
        "valor_servicos": "1.0",
        "valor_liquido": "1.0",
    },
}

SEED_PHP: dict[str, Any] = {
    "data_emissao": "2017-12-27T17:43:14-3:00",
    "incentivador_cultural": "false",
    "natureza_operacao": "1",
    "optante_simples_nacional": "false",
    "prestador": {
        "cnpj": "51916585000125",
        "inscricao_municipal": "12345",
        "codigo_municipio": "4119905",
    },
    "tomador": {
        "cnpj": "07504505000132",
        "razao_social": "Acras Tecnologia da Informação LTDA",
        "email": "contato@focusnfe.com.br",
        "endereco": {
            "bairro": "Jardim America",
            "cep": "81530900",
            "codigo_municipio": "4119905",
            "logradouro": "Rua ABC",
            "numero": "16",
            "uf": "PR",
        },
    },
    "servico": {
        "discriminacao": "Exemplo Serviço",
        "iss_retido": "false",
        "item_lista_servico": "106",
        "codigo_cnae": "6319400",
        "valor_servicos": "1.00",
    },
}

SEED_JS: dict[str, Any] = {
    "data_emissao": "2018-03-21",
    "prestador": {
        "cnpj": "51916585000125",
        "inscricao_municipal": "12345",
        "codigo_municipio": "3518800",
    },
    "tomador": {
        "cnpj": "07504505000132",
        "razao_social": "Acras Tecnologia da Informacao LTDA",
        "email": "contato@focusnfe.com.br",
        "endereco": {
            "logradouro": "Rua Filho da Rocha Bage",
            "numero": "750",
            "complemento": "Sala 07",
            "bairro": "Alto da Rua XV",
            "codigo_municipio": "4106902",
            "uf": "PR",
            "cep": "80045165",
        },
    },
    "servico": {
        "aliquota": 3,
        "discriminacao": "Nota fiscal referente a servicos prestados",
        "iss_retido": "false",
        "item_lista_servico": "1401",
        "codigo_tributario_municipio": "452000100",
        "valor_servicos": 1.0,
    },
}

SEED_EXAMPLES = {
    "json": SEED_JSON,
    "ruby": SEED_RUBY,
    "python": SEED_PYTHON,
    "java": SEED_JAVA,
    "php": SEED_PHP,
    "js": SEED_JS,
}

_BAD_SEED_CNPJS = {"18765499000199": VALID_CNPJ, "99999999999999": VALID_CNPJ_2}


def fixed(doc: dict[str, Any]) -> dict[str, Any]:
    """The example with its check-digit-failing CNPJs replaced by valid ones."""
    out = copy.deepcopy(doc)
    for part in ("prestador", "tomador"):
        if part in out and out[part].get("cnpj") in _BAD_SEED_CNPJS:
            out[part]["cnpj"] = _BAD_SEED_CNPJS[out[part]["cnpj"]]
    return out


def valid_doc() -> dict[str, Any]:
    return fixed(SEED_JSON)


def error_of(doc: object) -> tuple[str, str]:
    with pytest.raises(InvalidDocument) as caught:
        normalize_nfse(doc)
    return caught.value.field, caught.value.message


def with_change(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    doc = valid_doc()
    change(doc)
    return doc


# --- schema files --------------------------------------------------------------------------


def test_every_schema_file_passes_the_draft_2020_12_meta_schema() -> None:
    assert "nfse" in schemas.names()
    for name in schemas.names():
        schemas.meta_check(name)
        jsonschema.Draft202012Validator.check_schema(schemas.load(name))


def test_schema_loader_is_cached_and_safe() -> None:
    assert schemas.validator("nfse") is schemas.validator("nfse")
    first = schemas.load("nfse")
    first["required"] = []
    assert schemas.load("nfse")["required"] == ["data_emissao", "prestador", "servico"]
    with pytest.raises(ValueError):
        schemas.load("../pyproject")


def test_python_jsonschema_agrees_with_jsonschema_rs_on_the_seed_examples() -> None:
    reference = jsonschema.Draft202012Validator(schemas.load("nfse"))
    for doc in SEED_EXAMPLES.values():
        assert reference.is_valid(doc)
        assert schemas.validator("nfse").is_valid(doc)


def test_schema_defaults_match_defaults_doc() -> None:
    properties = schemas.load("nfse")["properties"]
    for field, default, why in DEFAULTS_DOC:
        assert why
        if "." not in field:
            assert properties[field]["default"] == default


# --- the seed's examples -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEED_EXAMPLES))
def test_every_seed_example_normalizes_once_its_cnpjs_are_valid(name: str) -> None:
    doc = normalize_nfse(fixed(SEED_EXAMPLES[name]))
    assert doc["servico"]["iss_retido"] is False
    assert doc["natureza_operacao"] == "1"
    assert normalize_nfse(doc) == doc


def test_unchanged_json_example_fails_on_the_prestador_check_digit() -> None:
    assert error_of(SEED_JSON) == (
        "prestador.cnpj",
        'Parâmetro "prestador.cnpj" inválido: CNPJ com dígito verificador inválido',
    )


def test_json_example_normalized_in_full() -> None:
    assert normalize_nfse(valid_doc()) == {
        "data_emissao": "2017-09-21T22:15:00",
        "natureza_operacao": "1",
        "optante_simples_nacional": False,
        "incentivador_cultural": False,
        "prestador": {
            "cnpj": VALID_CNPJ,
            "codigo_municipio": "3516200",
            "inscricao_municipal": "12345",
        },
        "tomador": {
            "cnpj": "07504505000132",
            "razao_social": "Acras Tecnologia da Informação LTDA",
            "email": "contato@focusnfe.com.br",
            "endereco": {
                "logradouro": "Rua Dias da Rocha Filho",
                "numero": "999",
                "complemento": "Prédio 04 - Sala 34C",
                "bairro": "Alto da XV",
                "codigo_municipio": "4106902",
                "uf": "PR",
                "cep": "80045165",
            },
        },
        "servico": {
            "valor_servicos": "1.0",
            "iss_retido": False,
            "aliquota": "3",
            "item_lista_servico": "0107",
            "codigo_tributario_municipio": "620910000",
            "discriminacao": "Nota fiscal referente a serviços prestados",
            "codigo_municipio": "3516200",
        },
    }


def test_python_example_quirks() -> None:
    doc = normalize_nfse(fixed(SEED_PYTHON))
    assert doc["optante_simples_nacional"] is True
    assert doc["incentivador_cultural"] is False
    assert doc["servico"]["aliquota"] == "2.92"
    assert doc["servico"]["valor_servicos"] == "1.00"
    assert doc["servico"]["codigo_municipio"] == "9999999"  # abroad, from the prestador
    assert doc["tomador"]["endereco"]["cep"] == "31999000"
    # Fields the seed's examples send that notaflow does not know go to Focus as sent.
    assert doc["razao_social"] == SEED_PYTHON["razao_social"]
    assert doc["status"] == SEED_PYTHON["status"]
    assert doc["servico"]["valor_liquido"] == SEED_PYTHON["servico"]["valor_liquido"]


def test_php_and_js_dates_are_kept_as_sent() -> None:
    assert normalize_nfse(SEED_PHP)["data_emissao"] == "2017-12-27T17:43:14-3:00"
    assert normalize_nfse(SEED_JS)["data_emissao"] == "2018-03-21"


def test_java_example_tomador_cpf() -> None:
    assert normalize_nfse(SEED_JAVA)["tomador"]["cpf"] == "51966818092"


# --- defaults ------------------------------------------------------------------------------


def minimal_doc() -> dict[str, Any]:
    return {
        "data_emissao": "2018-03-21",
        "prestador": {
            "cnpj": VALID_CNPJ,
            "codigo_municipio": "4106902",
            "inscricao_municipal": "1",
        },
        "servico": {
            "valor_servicos": "10.00",
            "iss_retido": False,
            "item_lista_servico": "0107",
            "discriminacao": "x",
        },
    }


def test_every_default_is_applied_to_a_minimal_document() -> None:
    doc = normalize_nfse(minimal_doc())
    for field, default, _ in DEFAULTS_DOC:
        head, _, tail = field.partition(".")
        value = doc[head][tail] if tail else doc[head]
        expected = doc["prestador"]["codigo_municipio"] if tail else default
        assert value == expected, field
    assert "tomador" not in doc and "intermediario" not in doc


def test_defaults_do_not_override_what_the_client_sent() -> None:
    raw = minimal_doc()
    raw.update(natureza_operacao=2, optante_simples_nacional="1", incentivador_cultural=1)
    raw["servico"]["codigo_municipio"] = "3550308"
    doc = normalize_nfse(raw)
    assert doc["natureza_operacao"] == "2"
    assert doc["optante_simples_nacional"] is True
    assert doc["incentivador_cultural"] is True
    assert doc["servico"]["codigo_municipio"] == "3550308"


def test_normalize_does_not_touch_its_input() -> None:
    raw = fixed(SEED_PYTHON)
    before = copy.deepcopy(raw)
    normalize_nfse(raw)
    assert raw == before


# --- required fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "data_emissao",
        "prestador",
        "servico",
        "prestador.cnpj",
        "prestador.codigo_municipio",
        "prestador.inscricao_municipal",
        "servico.valor_servicos",
        "servico.item_lista_servico",
        "servico.discriminacao",
        "servico.iss_retido",
    ],
)
def test_missing_required_field_is_named_by_its_dotted_path(path: str) -> None:
    def drop(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for parent in parents:
            doc = doc[parent]
        del doc[last]

    assert error_of(with_change(drop)) == (path, f'Parâmetro "{path}" não informado')


def test_focus_error_example_of_the_seed() -> None:
    doc = with_change(lambda d: d["prestador"].pop("codigo_municipio"))
    assert error_of(doc)[1] == 'Parâmetro "prestador.codigo_municipio" não informado'


@pytest.mark.parametrize("path", ["servico.discriminacao", "servico.item_lista_servico"])
def test_empty_required_text_counts_as_missing(path: str) -> None:
    field = path.split(".")[1]
    doc = with_change(lambda d: d["servico"].__setitem__(field, ""))
    assert error_of(doc) == (path, f'Parâmetro "{path}" não informado')


def test_rps_substitution_needs_serie_and_tipo() -> None:
    doc = with_change(lambda d: d.update(numero_rps_substituido="10"))
    assert error_of(doc) == (
        "serie_rps_substituido",
        'Parâmetro "serie_rps_substituido" não informado',
    )
    doc.update(serie_rps_substituido="A", tipo_rps_substituido="1")
    assert normalize_nfse(doc)["tipo_rps_substituido"] == "1"


# --- wrong types and formats ---------------------------------------------------------------


def decimal_error(path: str) -> tuple[str, str]:
    return path, f'Parâmetro "{path}" inválido: deve ser um número decimal'


@pytest.mark.parametrize("value", ["1,00", "1e3", "-1", "-1.00", " 1", ".5", "1.", True, [], -0.01])
def test_bad_decimals(value: object) -> None:
    doc = with_change(lambda d: d["servico"].__setitem__("valor_servicos", value))
    assert error_of(doc) == decimal_error("servico.valor_servicos")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.00", "1.00"),
        (1.0, "1.0"),
        (3, "3"),
        ("0", "0"),
        (0, "0"),
        ("2.92", "2.92"),
        (2.92, "2.92"),
        (-0.0, "0.0"),
        ("007.50", "7.50"),
        (1e16, "10000000000000000"),
        (1e-7, "0.0000001"),
        (10**30, "1" + "0" * 30),
        ("11.68", "11.68"),
    ],
)
def test_decimals_keep_the_clients_scale(value: object, expected: str) -> None:
    doc = normalize_nfse(with_change(lambda d: d["servico"].__setitem__("valor_iss", value)))
    assert doc["servico"]["valor_iss"] == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        (1, True),
        (0, False),
    ],
)
def test_boolean_spellings(value: object, expected: bool) -> None:
    doc = normalize_nfse(with_change(lambda d: d["servico"].__setitem__("iss_retido", value)))
    assert doc["servico"]["iss_retido"] is expected


@pytest.mark.parametrize("value", ["True", "yes", "sim", 3, "3", "01", [True]])
def test_bad_booleans(value: object) -> None:
    doc = with_change(lambda d: d["servico"].__setitem__("iss_retido", value))
    assert error_of(doc) == (
        "servico.iss_retido",
        'Parâmetro "servico.iss_retido" inválido: deve ser true ou false',
    )


@pytest.mark.parametrize(("value", "expected"), [("1", "1"), (6, "6"), ("3", "3"), (2.0, "2")])
def test_enum_codes_as_string_or_integer(value: object, expected: str) -> None:
    raw = with_change(lambda d: d.update(natureza_operacao=value, regime_especial_tributacao=value))
    doc = normalize_nfse(raw)
    assert doc["natureza_operacao"] == doc["regime_especial_tributacao"] == expected


@pytest.mark.parametrize("value", [9, "9", 0, "0", True, "01", " 1", 1.5])
def test_natureza_operacao_outside_the_table(value: object) -> None:
    doc = with_change(lambda d: d.update(natureza_operacao=value))
    assert error_of(doc) == (
        "natureza_operacao",
        'Parâmetro "natureza_operacao" inválido: valores aceitos 1, 2, 3, 4, 5, 6',
    )


def test_regime_especial_outside_the_table() -> None:
    doc = with_change(lambda d: d.update(regime_especial_tributacao="7"))
    assert error_of(doc)[1].endswith("valores aceitos 1, 2, 3, 4, 5, 6")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(data_emissao=20170921), "data_emissao"),
        (lambda d: d["prestador"].update(cnpj=51916585000125), "prestador.cnpj"),
        (lambda d: d["prestador"].update(codigo_municipio=3516200), "prestador.codigo_municipio"),
        (lambda d: d["tomador"]["endereco"].update(numero=999), "tomador.endereco.numero"),
        (lambda d: d["tomador"].update(razao_social=5), "tomador.razao_social"),
        (lambda d: d["servico"].update(item_lista_servico=107), "servico.item_lista_servico"),
        (lambda d: d.update(codigo_obra=["x"]), "codigo_obra"),
    ],
)
def test_known_field_with_wrong_type(change: Callable[[dict[str, Any]], None], field: str) -> None:
    assert error_of(with_change(change)) == (
        field,
        f'Parâmetro "{field}" inválido: deve ser um texto',
    )


@pytest.mark.parametrize("part", ["prestador", "servico", "tomador", "intermediario"])
@pytest.mark.parametrize("value", ["x", [], 1, True])
def test_sections_must_be_objects(part: str, value: object) -> None:
    doc = with_change(lambda d: d.update({part: value}))
    assert error_of(doc) == (part, f'Parâmetro "{part}" inválido: deve ser um objeto')


def test_endereco_must_be_an_object() -> None:
    doc = with_change(lambda d: d["tomador"].update(endereco="Rua X"))
    assert error_of(doc)[0] == "tomador.endereco"


@pytest.mark.parametrize(
    ("field", "limit"),
    [
        ("tomador.razao_social", 115),
        ("tomador.telefone", 11),
        ("tomador.email", 80),
        ("tomador.endereco.logradouro", 125),
        ("tomador.endereco.tipo_logradouro", 3),
        ("tomador.endereco.numero", 10),
        ("tomador.endereco.complemento", 60),
        ("tomador.endereco.bairro", 60),
        ("codigo_obra", 15),
        ("intermediario.razao_social", 115),
    ],
)
def test_maximum_lengths(field: str, limit: int) -> None:
    def put(value: str) -> dict[str, Any]:
        doc = valid_doc()
        doc.setdefault("intermediario", {})
        target = doc
        *parents, last = field.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
        return doc

    assert normalize_nfse(put("é" * limit))  # characters, not bytes
    assert error_of(put("é" * (limit + 1))) == (
        field,
        f'Parâmetro "{field}" inválido: tamanho máximo {limit} caracteres',
    )


# --- data_emissao --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "2017-09-21T22:15:00",
        "2018-02-26T12:00:00-03:00",
        "2016-12-25T12:00-0300",
        "2018-03-21",
        "2017-12-27T17:43:14-3:00",
        "2017-09-21T22:15:00Z",
        "2017-09-21T22:15:00.123-03:00",
        "2018-01-15 17:40:00",
        "2016-02-29",
        "2017-09-21T22:15+05:30",
    ],
)
def test_accepted_dates(value: str) -> None:
    doc = normalize_nfse(with_change(lambda d: d.update(data_emissao=value)))
    assert doc["data_emissao"] == value


@pytest.mark.parametrize(
    "value",
    [
        "2017-13-01",
        "2017-02-29",
        "2017-02-30",
        "21/09/2017",
        "2017-09-21T25:00",
        "2017-09-21T22:60",
        "2017-09-21T22:15:61",
        "2017-09-21T22:15:00+24:00",
        "2017-09-21T22:15:00-03:60",
        "2017-09-21T",
        "2017-9-21",
        "0000-01-01",
        "2017-09-21T22:15:00 -03:00",
    ],
)
def test_rejected_dates(value: str) -> None:
    assert error_of(with_change(lambda d: d.update(data_emissao=value))) == (
        "data_emissao",
        'Parâmetro "data_emissao" inválido: deve ser uma data ISO 8601, por exemplo '
        "2016-12-25T12:00-0300",
    )


# --- fiscal checks -------------------------------------------------------------------------


def test_prestador_cnpj_punctuation_is_ignored() -> None:
    doc = normalize_nfse(with_change(lambda d: d["prestador"].update(cnpj="51.916.585/0001-25")))
    assert doc["prestador"]["cnpj"] == VALID_CNPJ


def test_alphanumeric_cnpj_is_accepted_and_uppercased() -> None:
    doc = normalize_nfse(with_change(lambda d: d["prestador"].update(cnpj="12.abc.345/01de-35")))
    assert doc["prestador"]["cnpj"] == "12ABC34501DE35"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("51916585000126", "CNPJ com dígito verificador inválido"),
        ("99999999999999", "CNPJ com dígito verificador inválido"),
        ("00000000000000", "CNPJ com dígito verificador inválido"),
        ("5191658500012", "CNPJ deve ter 14 caracteres"),
    ],
)
@pytest.mark.parametrize("part", ["prestador", "tomador"])
def test_bad_cnpjs(part: str, value: str, why: str) -> None:
    doc = with_change(lambda d: d[part].update(cnpj=value))
    assert error_of(doc) == (f"{part}.cnpj", f'Parâmetro "{part}.cnpj" inválido: {why}')


def test_tomador_cpf() -> None:
    def use_cpf(value: str) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            del doc["tomador"]["cnpj"]
            doc["tomador"]["cpf"] = value

        return change

    assert normalize_nfse(with_change(use_cpf("519.668.180-92")))["tomador"]["cpf"] == "51966818092"
    dv = 'Parâmetro "tomador.cpf" inválido: CPF com dígito verificador inválido'
    assert error_of(with_change(use_cpf("51966818093"))) == ("tomador.cpf", dv)
    assert error_of(with_change(use_cpf("111.111.111-11"))) == ("tomador.cpf", dv)
    size = 'Parâmetro "tomador.cpf" inválido: CPF deve ter 11 dígitos'
    assert error_of(with_change(use_cpf("5196681809"))) == ("tomador.cpf", size)
    assert error_of(with_change(use_cpf("5196681809A"))) == ("tomador.cpf", size)


def test_tomador_with_both_cpf_and_cnpj() -> None:
    doc = with_change(lambda d: d["tomador"].update(cpf="51966818092"))
    assert error_of(doc) == (
        "tomador",
        'Parâmetro "tomador" inválido: informe apenas um entre cpf, cnpj e nif',
    )


def test_tomador_without_document_is_accepted() -> None:
    doc = normalize_nfse(with_change(lambda d: d["tomador"].pop("cnpj")))
    assert "cpf" not in doc["tomador"] and "cnpj" not in doc["tomador"]
    assert normalize_nfse(with_change(lambda d: d.update(tomador={})))["tomador"] == {}


def test_intermediario() -> None:
    inter = {"razao_social": "Intermediária", "cpf": "025.583.524-82", "inscricao_municipal": "9-8"}
    doc = normalize_nfse(with_change(lambda d: d.update(intermediario=inter)))
    assert doc["intermediario"] == {
        "razao_social": "Intermediária",
        "cpf": "02558352482",
        "inscricao_municipal": "98",
    }
    both = {"cpf": "02558352482", "cnpj": VALID_CNPJ}
    assert error_of(with_change(lambda d: d.update(intermediario=both)))[0] == "intermediario"
    bad = {"cnpj": "18765499000199"}
    assert error_of(with_change(lambda d: d.update(intermediario=bad))) == (
        "intermediario.cnpj",
        'Parâmetro "intermediario.cnpj" inválido: CNPJ com dígito verificador inválido',
    )


@pytest.mark.parametrize(
    "field",
    ["prestador.codigo_municipio", "servico.codigo_municipio", "tomador.endereco.codigo_municipio"],
)
@pytest.mark.parametrize("value", ["35162000", "351620", "3516201", "0000000", "35162OO"])
def test_bad_municipality_codes(field: str, value: str) -> None:
    def put(doc: dict[str, Any]) -> None:
        *parents, last = field.split(".")
        for parent in parents:
            doc = doc[parent]
        doc[last] = value

    assert error_of(with_change(put)) == (
        field,
        f'Parâmetro "{field}" inválido: código IBGE de município inválido',
    )


@pytest.mark.parametrize("value", ["2201919", "9999999", "5300108"])
def test_exceptional_and_abroad_municipality_codes(value: str) -> None:
    doc = normalize_nfse(with_change(lambda d: d["servico"].update(codigo_municipio=value)))
    assert doc["servico"]["codigo_municipio"] == value


@pytest.mark.parametrize(("value", "expected"), [("pr", "PR"), ("Sp", "SP"), ("EX", "EX")])
def test_uf_is_uppercased(value: str, expected: str) -> None:
    doc = normalize_nfse(with_change(lambda d: d["tomador"]["endereco"].update(uf=value)))
    assert doc["tomador"]["endereco"]["uf"] == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("XX", "UF inexistente"),
        ("PRR", "deve ser a sigla da UF com 2 letras"),
        ("P1", "deve ser a sigla da UF com 2 letras"),
    ],
)
def test_bad_ufs(value: str, why: str) -> None:
    doc = with_change(lambda d: d["tomador"]["endereco"].update(uf=value))
    assert error_of(doc) == (
        "tomador.endereco.uf",
        f'Parâmetro "tomador.endereco.uf" inválido: {why}',
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("80045-165", "80045165"), ("80.045-165", "80045165")]
)
def test_cep_punctuation(value: str, expected: str) -> None:
    doc = normalize_nfse(with_change(lambda d: d["tomador"]["endereco"].update(cep=value)))
    assert doc["tomador"]["endereco"]["cep"] == expected


@pytest.mark.parametrize("value", ["8004516", "800451650", "80045-1650", "ABCDE-FGH", "80 045 165"])
def test_bad_ceps(value: str) -> None:
    doc = with_change(lambda d: d["tomador"]["endereco"].update(cep=value))
    assert error_of(doc) == (
        "tomador.endereco.cep",
        'Parâmetro "tomador.endereco.cep" inválido: CEP deve ter 8 dígitos',
    )


def test_inscricao_municipal_keeps_only_digits() -> None:
    doc = normalize_nfse(
        with_change(lambda d: d["prestador"].update(inscricao_municipal="12.345-6"))
    )
    assert doc["prestador"]["inscricao_municipal"] == "123456"
    doc2 = with_change(lambda d: d["prestador"].update(inscricao_municipal="ISENTO"))
    assert error_of(doc2) == (
        "prestador.inscricao_municipal",
        'Parâmetro "prestador.inscricao_municipal" inválido: deve conter dígitos',
    )


# --- the body itself and error order -------------------------------------------------------


@pytest.mark.parametrize("body", [None, [], "x", 1, 1.5, True, [SEED_JSON]])
def test_body_must_be_an_object(body: object) -> None:
    assert error_of(body) == ("", NOT_AN_OBJECT)


def test_empty_object_reports_the_first_missing_field() -> None:
    assert error_of({}) == ("data_emissao", 'Parâmetro "data_emissao" não informado')


def test_non_json_values_are_refused_as_a_whole() -> None:
    assert error_of(with_change(lambda d: d["servico"].update(discriminacao=b"x")))[0] == ""
    assert error_of(with_change(lambda d: d["servico"].update(discriminacao={1: 2})))[0] == ""
    # Lone surrogates: named by field where the schema lets them through, else the whole body.
    assert error_of(with_change(lambda d: d["servico"].update(discriminacao="a\ud800"))) == (
        "servico.discriminacao",
        'Parâmetro "servico.discriminacao" inválido: contém caracteres inválidos',
    )
    assert error_of(with_change(lambda d: d.update(data_emissao="\ud800")))[0] == ""


def test_several_errors_report_the_smallest_path_every_time() -> None:
    def break_many(doc: dict[str, Any]) -> None:
        doc["servico"]["valor_servicos"] = "abc"
        doc["tomador"]["endereco"]["uf"] = 12
        doc["prestador"].pop("cnpj")
        doc["natureza_operacao"] = 9

    expected = (
        "natureza_operacao",
        'Parâmetro "natureza_operacao" inválido: valores aceitos 1, 2, 3, 4, 5, 6',
    )
    for _ in range(5):
        assert error_of(with_change(break_many)) == expected


def test_several_fiscal_errors_report_the_smallest_path_whatever_the_key_order() -> None:
    doc = valid_doc()
    doc["tomador"]["cnpj"] = "18765499000199"
    doc["prestador"]["codigo_municipio"] = "3516201"
    reordered = dict(reversed(list(doc.items())))
    expected = (
        "prestador.codigo_municipio",
        'Parâmetro "prestador.codigo_municipio" inválido: código IBGE de município inválido',
    )
    assert error_of(doc) == expected
    assert error_of(reordered) == expected


def test_schema_errors_come_before_fiscal_errors() -> None:
    # prestador.cnpj fails its check digit, but the schema error is reported first.
    doc = copy.deepcopy(SEED_JSON)
    doc["servico"]["valor_servicos"] = "x"
    assert error_of(doc)[0] == "servico.valor_servicos"


def test_unknown_fields_are_carried_as_sent() -> None:
    raw = with_change(lambda d: d.update(extra={"a": 1}, ref="abc"))
    raw["servico"]["valor_liquido"] = "1.00"
    raw["tomador"]["endereco"]["pais"] = 1058
    doc = normalize_nfse(raw)
    assert doc["extra"] == {"a": 1} and doc["ref"] == "abc"
    assert doc["servico"]["valor_liquido"] == "1.00"
    assert doc["tomador"]["endereco"]["pais"] == 1058


# --- cancellation and ref ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Sua justificativa aqui!",
        "Teste de cancelamento de nota",
        "Informe aqui a sua justificativa para realizar o cancelamento da NFSe.",
        "x" * 15,
        "x" * 255,
    ],
)
def test_good_justificativas(text: str) -> None:
    assert validate_justificativa({"justificativa": text}) == text


def test_justificativa_is_trimmed() -> None:
    assert validate_justificativa({"justificativa": "  " + "x" * 15 + "\n"}) == "x" * 15


@pytest.mark.parametrize("text", ["x" * 14, "x" * 256, " " * 20, "   curta   "])
def test_justificativa_length(text: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_justificativa({"justificativa": text})
    assert caught.value.field == "justificativa"
    assert caught.value.message == 'Parâmetro "justificativa" deve ter entre 15 e 255 caracteres'


@pytest.mark.parametrize(
    "body", [{}, {"justificativa": None}, {"justificativa": ""}, {"motivo": "x" * 20}]
)
def test_justificativa_missing(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_justificativa(body)
    assert (caught.value.field, caught.value.message) == (
        "justificativa",
        'Parâmetro "justificativa" não informado',
    )


def test_justificativa_wrong_types() -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_justificativa({"justificativa": 123456789012345678})
    assert caught.value.field == "justificativa"
    with pytest.raises(InvalidDocument) as caught:
        validate_justificativa(["Sua justificativa aqui!"])
    assert (caught.value.field, caught.value.message) == ("", NOT_AN_OBJECT)


@pytest.mark.parametrize("ref", ["12345", "abcXYZ123", "a", "x" * 50])
def test_good_refs(ref: str) -> None:
    assert validate_ref(ref) == ref


@pytest.mark.parametrize("ref", [None, ""])
def test_missing_ref(ref: str | None) -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_ref(ref)
    assert (caught.value.field, caught.value.message) == ("ref", 'Parâmetro "ref" não informado')


@pytest.mark.parametrize(
    "ref", ["nfs-2", "id_referencia_nota", "a b", "ação", "abc\n", "1/2", "١٢"]
)
def test_ref_with_other_characters(ref: str) -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_ref(ref)
    assert (caught.value.field, caught.value.message) == (
        "ref",
        'Parâmetro "ref" inválido: use apenas letras e números',
    )


def test_ref_too_long() -> None:
    with pytest.raises(InvalidDocument) as caught:
        validate_ref("x" * 51)
    assert caught.value.message == 'Parâmetro "ref" inválido: tamanho máximo 50 caracteres'


# --- properties ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["1", "0", "true", "1.00", "3516200", "PR", "80045-165", VALID_CNPJ])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

_SCHEMA = schemas.load("nfse")


def _known_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, sub in schema["properties"].items():
        paths.append((*prefix, name))
        if "properties" in sub:
            paths.extend(_known_paths(sub, (*prefix, name)))
    return paths


KNOWN_PATHS = _known_paths(_SCHEMA)


def _normalize_or_error(raw: object) -> dict[str, Any] | None:
    try:
        return normalize_nfse(raw)
    except InvalidDocument as error:
        assert isinstance(error.field, str) and error.message
        assert error.message.startswith(("Parâmetro", "O corpo"))
        return None


@given(json_values)
def test_arbitrary_json_only_raises_invalid_document(raw: object) -> None:
    _normalize_or_error(raw)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KNOWN_PATHS), json_values, st.sampled_from(sorted(SEED_EXAMPLES)))
def test_any_value_in_any_known_field_only_raises_invalid_document(
    path: tuple[str, ...], value: object, example: str
) -> None:
    raw = fixed(SEED_EXAMPLES[example])
    target = raw
    for part in path[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return
    target[path[-1]] = value
    doc = _normalize_or_error(raw)
    if doc is not None:
        assert normalize_nfse(doc) == doc
        json.dumps(doc)  # stays JSON-serialisable for the bus


booleans = st.sampled_from([True, False, "true", "false", "1", "0", 1, 0])
decimals = (
    st.decimals(min_value=0, max_value=10**12, allow_nan=False, allow_infinity=False, places=4).map(
        str
    )
    | st.floats(min_value=0, max_value=1e15, allow_nan=False)
    | st.integers(min_value=0, max_value=10**15)
)
codes = st.sampled_from(["1", "2", "3", "4", "5", "6", 1, 2, 3, 4, 5, 6])
municipios = st.sampled_from(
    ["3550308", "3304557", "4106902", "3516200", "5300108", "9999999", "2201919"]
)
cnpjs = st.sampled_from(
    ["07504505000132", "51.916.585/0001-25", "22769530000131", "12abc34501de35"]
)
cpfs = st.sampled_from(["02558352482", "771.846.425-38", "51966818092"])
texts = st.text(max_size=10)


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    def maybe(doc: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
        if draw(st.booleans()):
            doc[key] = draw(strategy)

    doc: dict[str, Any] = {
        "data_emissao": draw(
            st.sampled_from(["2018-03-21", "2017-12-27T17:43:14-3:00", "2018-01-15T17:40:00"])
        ),
        "prestador": {
            "cnpj": draw(cnpjs),
            "codigo_municipio": draw(municipios),
            "inscricao_municipal": draw(st.sampled_from(["12345", "1.234-5"])),
        },
        "servico": {
            "valor_servicos": draw(decimals),
            "iss_retido": draw(booleans),
            "item_lista_servico": draw(st.text(min_size=1, max_size=5)),
            "discriminacao": draw(st.text(min_size=1, max_size=20)),
        },
    }
    for key in ("natureza_operacao", "regime_especial_tributacao"):
        maybe(doc, key, codes)
    for key in ("optante_simples_nacional", "incentivador_cultural"):
        maybe(doc, key, booleans)
    for key in (
        "valor_deducoes",
        "valor_iss",
        "aliquota",
        "base_calculo",
        "percentual_total_tributos",
    ):
        maybe(doc["servico"], key, decimals)
    maybe(doc["servico"], "codigo_municipio", municipios)
    maybe(doc["servico"], "codigo_cnae", texts)
    if draw(st.booleans()):
        tomador: dict[str, Any] = {}
        document = draw(st.sampled_from(["cpf", "cnpj", None]))
        if document is not None:
            tomador[document] = draw(cpfs if document == "cpf" else cnpjs)
        maybe(tomador, "razao_social", texts)
        if draw(st.booleans()):
            tomador["endereco"] = {
                "codigo_municipio": draw(municipios),
                "uf": draw(st.sampled_from(["PR", "sp", "EX"])),
                "cep": draw(st.sampled_from(["80045165", "31999-000", "80.045-165"])),
                "numero": draw(st.text(max_size=10)),
            }
        doc["tomador"] = tomador
    # Carried as sent: any integer the bus can hold (64 bits; larger ones are refused).
    maybe(doc, "unknown_" + draw(st.text(max_size=5)), st.integers(-(2**63), 2**63 - 1))
    return doc


@given(valid_documents())
def test_valid_documents_normalize_idempotently(raw: dict[str, Any]) -> None:
    doc = normalize_nfse(raw)
    assert normalize_nfse(doc) == doc
    for field in ("natureza_operacao", "optante_simples_nacional", "incentivador_cultural"):
        assert field in doc
    assert isinstance(doc["servico"]["iss_retido"], bool)
    assert isinstance(doc["servico"]["valor_servicos"], str)
    assert doc["servico"]["codigo_municipio"]
    assert isinstance(doc["natureza_operacao"], str)
