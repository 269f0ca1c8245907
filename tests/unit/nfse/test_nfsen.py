"""NFS-e Nacional: notaflow.nfsen (core validated, the rest carried) and the sandbox's
Ambiente Nacional rules (the 50-digit chave de acesso, E-codes)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from notaflow.errors import InvalidDocument
from notaflow.nfsen import mail_document, normalize_nfsen
from notaflow.sandbox import focus_nacional_rules as nacional
from testkit.erp_documents import ERP_NFSEN, expected_nfsen_at_provider


def changed(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(ERP_NFSEN)
    doc.update(changes)
    return doc


def error_of(doc: object) -> tuple[str, str]:
    with pytest.raises(InvalidDocument) as caught:
        normalize_nfsen(doc)
    return caught.value.field, caught.value.message


def test_erp_document_is_carried_field_for_field() -> None:
    doc = normalize_nfsen(copy.deepcopy(ERP_NFSEN))
    expected_nfsen_at_provider(ERP_NFSEN, doc)
    assert normalize_nfsen(doc) == doc


def test_numbers_may_come_as_numbers() -> None:
    doc = normalize_nfsen(changed(valor_servico=1000.5, tributacao_iss=1, tipo_retencao_iss=2))
    assert (doc["valor_servico"], doc["tributacao_iss"], doc["tipo_retencao_iss"]) == (
        "1000.5",
        "1",
        "2",
    )


@pytest.mark.parametrize(
    ("changes", "field", "why"),
    [
        ({"cnpj_prestador": "51916585000126"}, "cnpj_prestador", "CNPJ com dígito verificador"),
        ({"cnpj_tomador": "07504505000133"}, "cnpj_tomador", "CNPJ com dígito verificador"),
        ({"codigo_municipio_emissora": "3516201"}, "codigo_municipio_emissora", "IBGE"),
        ({"codigo_municipio_prestacao": "351620"}, "codigo_municipio_prestacao", "IBGE"),
        ({"codigo_tributacao_nacional_iss": "0107"}, "codigo_tributacao_nacional_iss", "6 dígitos"),
        ({"data_competencia": "2026-02-30"}, "data_competencia", "ISO 8601"),
        ({"tributacao_iss": "5"}, "tributacao_iss", "valores aceitos 1, 2, 3, 4"),
        ({"tipo_retencao_iss": 4}, "tipo_retencao_iss", "valores aceitos 1, 2, 3"),
        ({"codigo_opcao_simples_nacional": "4"}, "codigo_opcao_simples_nacional", "1, 2, 3"),
        ({"valor_servico": "-1"}, "valor_servico", "número decimal"),
        ({"valor_servico": None}, "valor_servico", "não informado"),
        ({"descricao_servico": False}, "descricao_servico", "não informado"),
        ({"cpf_prestador": "51966818092"}, "cnpj_prestador", "não ambos"),
        ({"cnpj_prestador": None}, "cnpj_prestador", "não informado"),
        ({"cpf_tomador": "51966818092"}, "cnpj_tomador", "não ambos"),
    ],
)
def test_core_is_validated(changes: dict[str, Any], field: str, why: str) -> None:
    got_field, message = error_of(changed(**changes))
    assert got_field == field and why in message and f'"{field}"' in message, message


def test_mei_issues_under_its_cpf() -> None:
    doc = normalize_nfsen(changed(cnpj_prestador=None, cpf_prestador="519.668.180-92"))
    assert doc["cpf_prestador"] == "51966818092" and "cnpj_prestador" not in doc


def test_mail_document_has_the_municipal_shape() -> None:
    mail = mail_document(normalize_nfsen(copy.deepcopy(ERP_NFSEN)))
    assert mail["tomador"]["email"] == "contas.nacional@acras.example"
    assert mail["servico"] == {
        "valor_servicos": "1000.00",
        "discriminacao": ERP_NFSEN["descricao_servico"],
    }


# --- the sandbox's Ambiente Nacional --------------------------------------------------------


def test_chave_de_acesso_structure() -> None:
    issued = datetime(2026, 1, 15, 13, 30, tzinfo=UTC)
    nota = nacional.authorize(
        copy.deepcopy(ERP_NFSEN), numero=7, authorized_at=issued, base_url="http://s", secret="ab"
    )
    chave = nota.chave
    assert len(chave) == 50 and chave.isdigit() and nacional.valid_chave(chave)
    assert chave[:7] == "3516200" and chave[7] == "2" and chave[8] == "2"
    assert chave[9:23] == "51916585000125" and chave[23:36] == "0000000000007"
    assert chave[36:40] == "2601"
    assert nota.url == f"http://s/ConsultaPublica/?tpc=1&chave={chave}"
    assert nota.caminho_xml_nota_fiscal == f"/notas_fiscais_servico_nacional/NFSe{chave}-ab.xml"
    broken = chave[:49] + str((int(chave[49]) + 1) % 10)
    assert not nacional.valid_chave(broken)


def test_cpf_prestador_is_padded_in_the_chave() -> None:
    doc = changed(cnpj_prestador=None, cpf_prestador="51966818092")
    nota = nacional.authorize(
        doc, numero=1, authorized_at=datetime.now(UTC), base_url="http://s", secret="x"
    )
    assert nota.chave[8] == "1" and nota.chave[9:23] == "00051966818092"
    assert nacional.valid_chave(nota.chave)


@pytest.mark.parametrize(
    ("changes", "codigo"),
    [
        ({"valor_servico": "0"}, "E0312"),
        ({"codigo_tributacao_nacional_iss": "410101"}, "E0314"),
        ({"codigo_tributacao_nacional_iss": "010001"}, "E0314"),
        ({"base_calculo_pis_cofins": None}, "E0330"),
        ({"descricao_servico": "x [sandbox:erro]"}, "E999"),
    ],
)
def test_ambiente_nacional_refusals(changes: dict[str, Any], codigo: str) -> None:
    assert [e["codigo"] for e in nacional.decide(changed(**changes)).erros] == [codigo]
    assert nacional.decide(copy.deepcopy(ERP_NFSEN)).authorized
