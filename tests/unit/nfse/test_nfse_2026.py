"""notaflow.nfse as real clients speak to Focus in 2026: everything sent is carried (bounded),
"no value" markers and ABRASF flags are understood, the IBS/CBS group and nif are validated."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notaflow.errors import InvalidDocument
from notaflow.nfse import (
    CARRY_MAX_DEPTH,
    CARRY_MAX_ITEMS,
    CARRY_MAX_KEYS,
    CARRY_MAX_TEXT,
    normalize_nfse,
)
from testkit.erp_documents import (
    ERP_NFSE,
    ERP_NFSE_ABSENT,
    ERP_NFSE_FOREIGN,
    dig,
    expected_at_provider,
    has,
)
from tests.unit.nfse.test_nfse_validation import error_of, valid_doc, with_change


def test_erp_document_is_accepted_and_carried_field_for_field() -> None:
    doc = normalize_nfse(copy.deepcopy(ERP_NFSE))
    expected_at_provider(ERP_NFSE, doc)
    for path in ERP_NFSE_ABSENT:
        if has(ERP_NFSE, path) and dig(ERP_NFSE, path) in (None, False, ""):
            assert not has(doc, path), path
    servico = doc["servico"]
    assert (
        servico["cbs_aliquota"] == "0.90"
        and servico["ibs_cbs_classificacao_tributaria"] == "000001"
    )
    assert doc["finalidade_emissao"] == "1" and servico["codigo_municipio_incidencia"] == "3516200"
    assert doc["informacoes_adicionais_contribuinte"] is False  # unknown: as sent
    assert normalize_nfse(doc) == doc


def test_foreign_tomador_with_nif() -> None:
    doc = normalize_nfse(copy.deepcopy(ERP_NFSE_FOREIGN))
    assert doc["tomador"]["nif"] == "DE811907980"
    assert "cnpj" not in doc["tomador"] and "cpf" not in doc["tomador"]


@pytest.mark.parametrize("document", [{"cpf": "51966818092"}, {"cnpj": "07504505000132"}])
def test_nif_and_a_brazilian_document_are_not_both_accepted(document: dict[str, str]) -> None:
    doc = with_change(lambda d: d.update(tomador={"nif": "X1", **document}))
    assert error_of(doc) == (
        "tomador",
        'Parâmetro "tomador" inválido: informe apenas um entre cpf, cnpj e nif',
    )
    doc = with_change(lambda d: d.update(intermediario={"nif": "X1", **document}))
    assert error_of(doc)[0] == "intermediario"


@pytest.mark.parametrize(("value", "expected"), [("0", "0"), (1, "1"), ("2", "2")])
def test_motivo_ausencia_nif(value: object, expected: str) -> None:
    doc = normalize_nfse(with_change(lambda d: d["tomador"].update(motivo_ausencia_nif=value)))
    assert doc["tomador"]["motivo_ausencia_nif"] == expected


@pytest.mark.parametrize("value", [3, "3", -1, "x"])
def test_motivo_ausencia_nif_outside_the_table(value: object) -> None:
    doc = with_change(lambda d: d["tomador"].update(motivo_ausencia_nif=value))
    assert error_of(doc) == (
        "tomador.motivo_ausencia_nif",
        'Parâmetro "tomador.motivo_ausencia_nif" inválido: valores aceitos 0, 1, 2',
    )


@pytest.mark.parametrize(
    "field",
    [
        "codigo_nbs",
        "codigo_indicador_operacao",
        "ibs_cbs_classificacao_tributaria",
        "ibs_cbs_situacao_tributaria",
    ],
)
@pytest.mark.parametrize("value", ["1.01", "01a", " 1", 115021000, "1" * 21])
def test_ibs_cbs_codes_are_digits(field: str, value: object) -> None:
    # A number is refused too: "000001" as a number would lose its zeros.
    why = "deve ser um texto" + ("" if isinstance(value, int) else " só com dígitos (até 20)")
    doc = with_change(lambda d: d["servico"].update({field: value}))
    assert error_of(doc) == (f"servico.{field}", f'Parâmetro "servico.{field}" inválido: {why}')


@pytest.mark.parametrize(
    "field",
    [
        "ibs_cbs_base_calculo",
        "ibs_uf_aliquota",
        "ibs_mun_aliquota",
        "cbs_aliquota",
        "ibs_uf_valor",
        "ibs_mun_valor",
        "cbs_valor",
    ],
)
def test_ibs_cbs_decimals(field: str) -> None:
    doc = normalize_nfse(with_change(lambda d: d["servico"].update({field: 0.9})))
    assert doc["servico"][field] == "0.9"
    bad = with_change(lambda d: d["servico"].update({field: "-0.9"}))
    assert error_of(bad) == (
        f"servico.{field}",
        f'Parâmetro "servico.{field}" inválido: deve ser um número decimal',
    )


# --- "no value" markers and ABRASF flags ------------------------------------------------------


@pytest.mark.parametrize("value", [None, False, ""])
@pytest.mark.parametrize(
    "path",
    [
        "regime_especial_tributacao",
        "codigo_obra",
        "intermediario",
        "tomador",
        "tomador.cnpj",
        "tomador.endereco",
        "tomador.endereco.cep",
        "tomador.endereco.uf",
        "servico.codigo_cnae",
        "servico.aliquota",
        "servico.codigo_municipio",
        "servico.codigo_nbs",
    ],
)
def test_no_value_means_absent(path: str, value: object) -> None:
    def put(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for parent in parents:
            doc = doc[parent]
        doc[last] = value

    doc = normalize_nfse(with_change(put))
    if path == "servico.codigo_municipio":  # absent, so the default applies
        assert doc["servico"]["codigo_municipio"] == doc["prestador"]["codigo_municipio"]
    else:
        assert not has(doc, path)


@pytest.mark.parametrize("value", [None, ""])
@pytest.mark.parametrize("field", ["optante_simples_nacional", "incentivador_cultural"])
def test_no_value_for_an_optional_boolean_takes_its_default(field: str, value: object) -> None:
    assert normalize_nfse(with_change(lambda d: d.update({field: value})))[field] is False


@pytest.mark.parametrize("value", [None, False, ""])
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
    ],
)
def test_required_field_without_value_is_named(path: str, value: object) -> None:
    def put(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for parent in parents:
            doc = doc[parent]
        doc[last] = value

    assert error_of(with_change(put)) == (path, f'Parâmetro "{path}" não informado')


@pytest.mark.parametrize("value", [None, ""])
def test_required_boolean_without_value_is_named(value: object) -> None:
    doc = with_change(lambda d: d["servico"].update(iss_retido=value))
    assert error_of(doc) == ("servico.iss_retido", 'Parâmetro "servico.iss_retido" não informado')


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), (1, True), ("2", False), (2, False), (2.0, False)]
)
@pytest.mark.parametrize(
    "path", ["optante_simples_nacional", "incentivador_cultural", "servico.iss_retido"]
)
def test_abrasf_flags(path: str, value: object, expected: bool) -> None:
    def put(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for parent in parents:
            doc = doc[parent]
        doc[last] = value

    doc = normalize_nfse(with_change(put))
    for part in path.split("."):
        doc = doc[part]
    assert doc is expected


# --- carried fields and their bounds -----------------------------------------------------------


def test_unknown_fields_keep_their_place_and_value() -> None:
    extra = {"a": [1, 2.5, None, True, {"b": "ç"}], "c": {}}
    doc = normalize_nfse(with_change(lambda d: d["servico"].update(extra=extra)))
    assert doc["servico"]["extra"] == extra
    assert list(doc["servico"])[-2:] == ["extra", "codigo_municipio"]


def nested(depth: int) -> object:
    value: object = "fundo"
    for _ in range(depth):
        value = {"n": value}
    return value


def test_carry_depth_bound() -> None:
    ok = with_change(lambda d: d.update(extra=nested(CARRY_MAX_DEPTH)))
    assert normalize_nfse(ok)["extra"] == nested(CARRY_MAX_DEPTH)
    too_deep = with_change(lambda d: d["tomador"].update(extra=nested(CARRY_MAX_DEPTH + 1)))
    field, message = error_of(too_deep)
    assert field == "tomador.extra" + ".n" * CARRY_MAX_DEPTH
    assert (
        message == f'Parâmetro "{field}" inválido: aninhamento maior que {CARRY_MAX_DEPTH} níveis'
    )


def test_carry_key_and_size_bounds() -> None:
    wide = {f"k{i}": i for i in range(CARRY_MAX_KEYS + 1)}
    assert error_of(with_change(lambda d: d.update(extra=wide))) == (
        "extra",
        f'Parâmetro "extra" inválido: no máximo {CARRY_MAX_KEYS} itens',
    )
    long_text = "x" * (CARRY_MAX_TEXT + 1)
    assert error_of(with_change(lambda d: d["servico"].update(nota=long_text))) == (
        "servico.nota",
        f'Parâmetro "servico.nota" inválido: tamanho máximo {CARRY_MAX_TEXT} caracteres',
    )
    many = {f"g{i}": list(range(100)) for i in range(CARRY_MAX_ITEMS // 100 + 1)}
    field, message = error_of(with_change(lambda d: d.update(extra=many)))
    assert field.startswith("extra.g") and str(CARRY_MAX_ITEMS) in message


def test_surrogates_in_carried_text_are_refused() -> None:
    raw = json.loads('{"x": "\\ud800"}')
    field, message = error_of(with_change(lambda d: d.update(raw)))
    assert field == "x" and "caracteres inválidos" in message


# Any JSON value a client may put under an unknown key: reaches the provider unchanged or is
# refused naming a field under that key, never dropped.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=10), children, max_size=8)
    ),
    max_leaves=60,
)


@pytest.mark.slow
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["", "servico.", "tomador.", "tomador.endereco.", "prestador."]),
    key=st.text(min_size=1, max_size=12),
    value=st.dictionaries(st.text(max_size=10), json_values, max_size=8),
)
def test_any_object_under_an_unknown_key_is_carried_or_refused(
    where: str, key: str, value: dict[str, Any]
) -> None:
    raw = valid_doc()
    target = raw
    for part in filter(None, where.split(".")):
        target = target[part]
    if key in target or (where == "" and key in ERP_NFSE) or key in ("nif", "motivo_ausencia_nif"):
        return  # a known field, not what this property is about
    target[key] = value
    # Through the wire as the ingress reads it and the Focus client writes it.
    body = orjson.loads(orjson.dumps(raw))
    try:
        doc = normalize_nfse(body)
    except InvalidDocument as error:
        assert error.field.startswith(where + key), error
        return
    carried = doc
    for part in filter(None, where.split(".")):
        carried = carried[part]
    assert orjson.loads(orjson.dumps(carried[key])) == value
