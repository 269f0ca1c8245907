"""Every rule and every marker of the sandbox prefeitura, without a server."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from notaflow.sandbox import focus_rules as rules


def nfse(**servico: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "data_emissao": "2018-02-26T12:00:00-03:00",
        "prestador": {
            "cnpj": "51.916.585/0001-25",
            "inscricao_municipal": "12345",
            "codigo_municipio": "4106902",
        },
        "tomador": {"cnpj": "07504505000132", "razao_social": "ACME"},
        "servico": {
            "aliquota": "2.92",
            "discriminacao": "Consultoria",
            "iss_retido": "false",
            "item_lista_servico": "1412",
            "valor_servicos": "1.00",
        },
    }
    doc["servico"].update(servico)
    return doc


def codes(decision: rules.Decision) -> list[str]:
    return [e["codigo"] for e in decision.erros]


def test_valid_document_is_authorized() -> None:
    assert rules.decide(nfse()).authorized


@pytest.mark.parametrize("municipio", sorted(rules.REGIME_OBRIGATORIO))
def test_regime_obrigatorio_absent_is_e145(municipio: str) -> None:
    doc = nfse()
    doc["prestador"]["codigo_municipio"] = municipio
    decision = rules.decide(doc)
    assert decision.erros == (
        {
            "codigo": "E145",
            "mensagem": "Regime Especial de Tributação ausente/inválido.",
            "correcao": None,
        },
    )


@pytest.mark.parametrize(("regime", "ok"), [("1", True), (6, True), ("7", False), ("", False)])
def test_regime_obrigatorio_values(regime: object, ok: bool) -> None:
    doc = nfse()
    doc["prestador"]["codigo_municipio"] = "3550308"
    doc["regime_especial_tributacao"] = regime
    assert rules.decide(doc).authorized is ok


def test_regime_not_demanded_elsewhere() -> None:
    assert "regime_especial_tributacao" not in nfse()
    assert rules.decide(nfse()).authorized


@pytest.mark.parametrize(
    ("aliquota", "ok"),
    [(None, True), ("5", True), (5, True), ("5.00", True), (0, True), ("2.92", True),
     ("5.01", False), (6, False), ("abc", False), (-1, False), (True, False)],
)  # fmt: skip
def test_aliquota_at_most_five_percent(aliquota: object, ok: bool) -> None:
    doc = nfse()
    if aliquota is None:
        del doc["servico"]["aliquota"]
    else:
        doc["servico"]["aliquota"] = aliquota
    assert codes(rules.decide(doc)) == ([] if ok else ["E160"])


@pytest.mark.parametrize("valor", ["0", 0, "-1.00", "0.00", None, "um real", "NaN"])
def test_valor_servicos_must_be_positive(valor: object) -> None:
    doc = nfse(valor_servicos=valor)
    assert codes(rules.decide(doc)) == ["E170"]


@pytest.mark.parametrize("item", ["0107", "01.07", "1412", "14.12", "4001", " 0801 "])
def test_item_lista_servico_accepted(item: str) -> None:
    assert rules.decide(nfse(item_lista_servico=item)).authorized


@pytest.mark.parametrize(
    "item", ["106", "01070", "1.07", "01-07", "4101", "0100", "0000", "ab12", "", None, 1412]
)
def test_item_lista_servico_refused(item: object) -> None:
    assert codes(rules.decide(nfse(item_lista_servico=item))) == ["E180"]


def test_all_broken_rules_are_reported_together() -> None:
    doc = nfse(aliquota=9, valor_servicos=0, item_lista_servico="x", discriminacao="[sandbox:erro]")
    doc["prestador"]["codigo_municipio"] = "5300108"
    assert codes(rules.decide(doc)) == ["E145", "E160", "E170", "E180", "E999"]


def test_malformed_sections_do_not_crash() -> None:
    decision = rules.decide({"prestador": "x", "servico": [1, 2]})
    assert codes(decision) == ["E170", "E180"]


def test_decide_does_not_mutate_the_document() -> None:
    doc = nfse(discriminacao="[sandbox:erro]")
    before = copy.deepcopy(doc)
    rules.decide(doc)
    assert doc == before


# -- markers -------------------------------------------------------------------------------


def test_marker_erro_is_e999() -> None:
    decision = rules.decide(nfse(discriminacao="Serviço [sandbox:erro] de teste"))
    assert codes(decision) == ["E999"]


def test_markers_parsed() -> None:
    text = "x [sandbox:delay=1.5] [sandbox:sem_callback] [sandbox:http500=2] [sandbox:nao_cancela]"
    assert rules.parse_markers(text) == rules.Markers(
        erro=False, delay=1.5, sem_callback=True, http500=2, nao_cancela=True
    )


def test_no_markers_and_unknown_markers_are_ignored() -> None:
    assert rules.parse_markers("[nota] [sandbox:outra=1]") == rules.Markers()


@pytest.mark.parametrize("text", ["[sandbox:delay=abc]", "[sandbox:http500=-1]"])
def test_bad_marker_values_raise(text: str) -> None:
    with pytest.raises(rules.ScenarioError):
        rules.parse_markers(text)


def test_plan_from_markers_and_default() -> None:
    assert rules.plan(nfse(), None, 0.2) == rules.Plan(
        delay=0.2, http500=0, send_callbacks=True, nao_cancela=False
    )
    marked = nfse(discriminacao="[sandbox:delay=3] [sandbox:sem_callback] [sandbox:http500=2]")
    assert rules.plan(marked, None, 0.2) == rules.Plan(
        delay=3.0, http500=2, send_callbacks=False, nao_cancela=False
    )
    assert rules.plan(nfse(discriminacao="[sandbox:nao_cancela]"), None, 0).nao_cancela


def test_scenario_wins_over_markers() -> None:
    marked = nfse(discriminacao="[sandbox:delay=3] [sandbox:http500=2] [sandbox:erro]")
    scenario = rules.Scenario(status="autorizado", delay=0.5, http500=1, drop_callback=True)
    assert rules.plan(marked, scenario, 0.2) == rules.Plan(
        delay=0.5, http500=1, send_callbacks=False, nao_cancela=False
    )
    assert rules.decide(marked, scenario).authorized


def test_scenario_forces_rejection_with_its_errors() -> None:
    ref, scenario = rules.parse_scenario(
        {"ref": "r1", "status": "erro_autorizacao", "erros": [{"codigo": "E1", "mensagem": "m"}]}
    )
    assert ref == "r1"
    assert rules.decide(nfse(), scenario).erros == (
        {"codigo": "E1", "mensagem": "m", "correcao": None},
    )


def test_scenario_rejection_defaults_to_e999() -> None:
    _, scenario = rules.parse_scenario({"ref": "r1", "status": "erro_autorizacao"})
    assert codes(rules.decide(nfse(), scenario)) == ["E999"]


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"ref": ""},
        {"ref": "r", "status": "cancelado"},
        {"ref": "r", "delay": -1},
        {"ref": "r", "http500": "x"},
        {"ref": "r", "erros": [{"codigo": "E1"}]},
    ],
)
def test_bad_scenarios_raise(body: object) -> None:
    with pytest.raises(rules.ScenarioError):
        rules.parse_scenario(body)


# -- authorized fields ---------------------------------------------------------------------


def test_authorize_fields() -> None:
    at = datetime(2024, 5, 27, 15, 30, 12, 999, tzinfo=UTC)
    nota = rules.authorize(nfse(), numero=233, authorized_at=at, base_url="http://sb:8/")
    code = nota.codigo_verificacao
    name = f"NFSe519165850001254106902-000000233-{code.replace('-', '')}"
    assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{3}", code)
    assert nota.fields() == {
        "numero": "233",
        "codigo_verificacao": code,
        "data_emissao": "2024-05-27T12:30:12-03:00",
        "url": "http://sb:8/nfse/51916585000125/233",
        "url_danfse": "http://sb:8/nfse/51916585000125/233/danfse.pdf",
        "caminho_xml_nota_fiscal": f"/notas_fiscais_servico/{name}.xml",
    }
    assert nota.xml_name == name


def test_codigo_verificacao_is_deterministic_and_distinct() -> None:
    assert rules.codigo_verificacao("1", 1) == rules.codigo_verificacao("1", 1)
    assert rules.codigo_verificacao("1", 1) != rules.codigo_verificacao("1", 2)
    assert rules.codigo_verificacao("1", 1) != rules.codigo_verificacao("2", 1)


def test_data_emissao_naive_is_utc() -> None:
    assert rules.data_emissao(datetime(2024, 1, 1, 3, 0)) == "2024-01-01T00:00:00-03:00"


def test_digits() -> None:
    assert rules.digits("07.504.505/0001-32") == "07504505000132"
    assert rules.digits(None) == ""


@pytest.mark.parametrize(
    ("text", "ok"), [("a" * 14, False), ("a" * 15, True), ("a" * 255, True), ("a" * 256, False),
                     (None, False), (123456789012345, False), ("   " + "a" * 14, False)],
)  # fmt: skip
def test_justificativa(text: object, ok: bool) -> None:
    assert rules.justificativa_valida(text) is ok


def test_cancel_refusal() -> None:
    day = 86400.0
    assert rules.cancel_refusal(authorized_at=0, now=day, window=day, nao_cancela=False) is None
    late = rules.cancel_refusal(authorized_at=0, now=day + 1, window=day, nao_cancela=False)
    assert late == rules.E523_PRAZO
    refused = rules.cancel_refusal(authorized_at=0, now=0, window=day, nao_cancela=True)
    assert refused is not None and refused["codigo"] == "E523"
