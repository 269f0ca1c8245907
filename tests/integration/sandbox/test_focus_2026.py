"""The Focus sandbox's prefeitura in 2026: it keeps what it received (GET ?completa=1), echoes
the IBS/CBS group and nif in its XML, refuses an inconsistent IBS/CBS group with an E-code,
and keeps a cancellation XML for a cancelled note."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import pytest

from notaflow.sandbox import focus_rules as rules
from testkit.erp_documents import ERP_NFSE, ERP_NFSE_FOREIGN
from tests.integration.sandbox.test_focus_sandbox import TOKEN, Sandbox, running_sandbox

NS = "{http://www.abrasf.org.br/nfse.xsd}"


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with running_sandbox() as running:
        yield running


def servico(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(ERP_NFSE)
    doc["servico"].update(changes)
    return doc


def codes(doc: dict[str, Any]) -> list[str]:
    return [e["codigo"] for e in rules.decide(doc).erros]


def test_consistent_ibs_cbs_group_is_authorized() -> None:
    assert codes(copy.deepcopy(ERP_NFSE)) == []
    assert codes(copy.deepcopy(ERP_NFSE_FOREIGN)) == []


@pytest.mark.parametrize(
    ("changes", "codigo"),
    [
        ({"cbs_aliquota": None}, "E310"),  # a value without its rate
        ({"ibs_uf_aliquota": False}, "E310"),
        ({"ibs_cbs_base_calculo": ""}, "E310"),  # rates without a base
        ({"cbs_valor": "9.50"}, "E311"),  # not base x rate
        ({"ibs_uf_valor": "2.00"}, "E311"),
        ({"ibs_cbs_classificacao_tributaria": None}, "E312"),
    ],
)
def test_inconsistent_ibs_cbs_group_is_refused(changes: dict[str, Any], codigo: str) -> None:
    assert codes(servico(**changes)) == [codigo]


def test_a_note_without_the_group_needs_none_of_it() -> None:
    doc = copy.deepcopy(ERP_NFSE)
    for name in list(doc["servico"]):
        if name.startswith(("ibs_", "cbs_")):
            del doc["servico"][name]
    assert codes(doc) == []


def test_xml_extras_echo_the_2026_fields_as_received() -> None:
    extras = rules.xml_extras(copy.deepcopy(ERP_NFSE_FOREIGN))
    assert extras["CbsAliquota"] == "0.90" and extras["IbsCbsClassificacaoTributaria"] == "000001"
    assert extras["TomadorNif"] == "DE811907980" and extras["CodigoNbs"] == "115021000"
    assert "TomadorMotivoAusenciaNif" not in extras  # null: absent


async def test_sandbox_keeps_what_it_received_and_the_cancellation_xml(sandbox: Sandbox) -> None:
    sent = copy.deepcopy(ERP_NFSE_FOREIGN)
    assert (await sandbox.post("n26", sent)).status_code == 202
    note = await sandbox.wait_status("n26", "autorizado")
    assert "requisicao_nota_fiscal" not in note
    for completa in ("1", "true", "True"):
        full = (await sandbox.api.get("/v2/nfse/n26", params={"completa": completa})).json()
        assert full["requisicao_nota_fiscal"] == sent
    xml = ET.fromstring((await sandbox.anon.get(note["caminho_xml_nota_fiscal"])).content)
    inf = xml.find(f"{NS}Nfse/{NS}InfNfse")
    assert inf is not None
    assert inf.findtext(f"{NS}TomadorNif") == "DE811907980"
    assert inf.findtext(f"{NS}CbsValor") == "9.00"
    assert "caminho_xml_cancelamento" not in note
    missing = note["caminho_xml_nota_fiscal"].replace(".xml", "-cancelamento.xml")
    assert (await sandbox.anon.get(missing)).status_code == 404  # not cancelled yet

    assert (await sandbox.cancel("n26")).json() == {"status": "cancelado"}
    cancelled = await sandbox.wait_status("n26", "cancelado")
    assert cancelled["caminho_xml_cancelamento"] == missing
    answer = await sandbox.anon.get(cancelled["caminho_xml_cancelamento"])  # no credentials
    assert answer.status_code == 200
    root = ET.fromstring(answer.content)
    assert root.tag == f"{NS}CancelarNfseResposta"
    assert root.findtext(f".//{NS}Numero") == note["numero"]
    assert root.findtext(f".//{NS}MotivoCancelamento") == "Serviço não prestado ao cliente"
    # Both downloads counted (the note's XML and its cancellation's); neither came with the
    # token, so neither cost it a credit: the POST, three GETs and the DELETE did.
    assert (await sandbox.stats())["downloads"]["n26"] == 2


async def test_a_public_file_costs_a_credit_only_when_fetched_with_the_token() -> None:
    """Focus serves the XML without credentials: fetched so, it is no token's request; fetched
    with the token, it is one of that token's requests like any other (focus-2026.md §5)."""
    limit = 60
    async with running_sandbox(rate_limit_per_minute=limit) as sandbox:
        assert (await sandbox.post("n28", copy.deepcopy(ERP_NFSE))).status_code == 202
        note = await sandbox.wait_status("n28", "autorizado")
        path = note["caminho_xml_nota_fiscal"]
        spent = (await sandbox.stats())["credits"][TOKEN]  # the POST and the polling GETs
        assert 2 <= spent < limit
        for _ in range(5):
            assert (await sandbox.anon.get(path)).status_code == 200
        assert (await sandbox.stats())["credits"][TOKEN] == spent
        answers = [await sandbox.api.get(path) for _ in range(limit - spent + 1)]
        stats = await sandbox.stats()
    assert [a.status_code for a in answers[:-1]] == [200] * (limit - spent)
    assert answers[-1].status_code == 429 and answers[-1].json()["codigo"] == "limite_excedido"
    assert answers[0].headers["Rate-Limit-Remaining"] == str(limit - spent - 1)
    assert stats["credits"][TOKEN] == limit and stats["downloads"]["n28"] == 5 + limit - spent


async def test_sandbox_refuses_an_inconsistent_group_with_its_e_code(sandbox: Sandbox) -> None:
    assert (await sandbox.post("n27", servico(cbs_aliquota=None))).status_code == 202
    note = await sandbox.wait_status("n27", "erro_autorizacao")
    assert [e["codigo"] for e in note["erros"]] == ["E310"]
