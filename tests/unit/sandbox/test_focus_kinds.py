"""The Focus sandbox answers both NFS-e kinds from one implementation (`sandbox.focus.notes`);
what differs is a `NoteKind`. Pure: the GET body (also every hook's body) of each kind through
a note's life, field by field and in order, so the shared code cannot blur the two."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from notaflow.sandbox import focus_nacional_rules as nacional
from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus.kinds import MUNICIPAL, NACIONAL
from notaflow.sandbox.focus.notes import Nota

AT = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
PLAN = rules.Plan(delay=0, http500=0, send_callbacks=True, nao_cancela=False)
MUNICIPAL_DOC: dict[str, Any] = {
    "prestador": {"cnpj": "51.916.585/0001-25", "codigo_municipio": "3550308"},
    "servico": {"discriminacao": "Consultoria", "valor_servicos": 100},
}
NACIONAL_DOC: dict[str, Any] = {
    "cnpj_prestador": "51916585000125",
    "codigo_municipio_emissora": "3550308",
    "descricao_servico": "Consultoria",
}


def nota(doc: dict[str, Any]) -> Nota[Any]:
    return Nota(
        token="t", ref="r1", cnpj="51916585000125", doc=doc, numero_rps=7, plan=PLAN,
        scenario=None, base_url="http://sandbox/",
    )  # fmt: skip


def test_municipal_body_through_a_notes_life() -> None:
    note = nota(MUNICIPAL_DOC)
    assert MUNICIPAL.cnpj(MUNICIPAL_DOC) == "51916585000125"
    assert list(MUNICIPAL.consulta(note)) == [
        "cnpj_prestador", "ref", "numero_rps", "serie_rps", "status"
    ]  # fmt: skip
    note.status, note.erros = "erro_autorizacao", (rules.erro("E160", "Alíquota"),)
    assert MUNICIPAL.consulta(note)["erros"] == [rules.erro("E160", "Alíquota")]
    note.status, note.erros = "autorizado", ()
    note.autorizada = MUNICIPAL.authorize(note, 3, AT)
    body = MUNICIPAL.consulta(note)
    assert list(body)[:6] == [
        "cnpj_prestador", "ref", "numero_rps", "serie_rps", "tipo_rps", "status"
    ]  # fmt: skip
    assert body["numero"] == "3" and body["numero_rps"] == "7"
    assert body["codigo_verificacao"] == rules.codigo_verificacao("51916585000125", 3)
    # The XML's name is the credential: the rules' public name plus 128 random bits.
    assert body["caminho_xml_nota_fiscal"].startswith("/notas_fiscais_servico/NFSe5191658500")
    assert len(note.autorizada.xml_name.rsplit("-", 1)[1]) == 32
    assert MUNICIPAL.public_key(note, note.autorizada) == ("51916585000125", 3)
    assert "caminho_xml_cancelamento" not in body
    note.status = "cancelado"
    cancelled = MUNICIPAL.consulta(note)["caminho_xml_cancelamento"]
    assert cancelled == body["caminho_xml_nota_fiscal"].replace(".xml", "-cancelamento.xml")


def test_national_body_through_a_notes_life() -> None:
    note = nota(NACIONAL_DOC)
    assert NACIONAL.cnpj(NACIONAL_DOC) == "51916585000125"
    assert NACIONAL.plan_doc(NACIONAL_DOC) == {"servico": {"discriminacao": "Consultoria"}}
    assert list(NACIONAL.consulta(note)) == ["cnpj_prestador", "ref", "numero_rps", "status"]
    note.status = "autorizado"
    note.autorizada = NACIONAL.authorize(note, 3, AT)
    body = NACIONAL.consulta(note)
    assert list(body)[:4] == ["cnpj_prestador", "ref", "numero_rps", "status"]
    assert "serie_rps" not in body and "tipo_rps" not in body
    chave = note.autorizada.chave
    assert nacional.valid_chave(chave)
    # Focus answers the chave de acesso as the national note's codigo_verificacao.
    assert body["codigo_verificacao"] == chave
    assert body["url"] == f"http://sandbox/ConsultaPublica/?tpc=1&chave={chave}"
    assert body["caminho_xml_nota_fiscal"].startswith("/notas_fiscais_servico_nacional/NFSe")
    assert NACIONAL.public_key(note, note.autorizada) == chave
    note.status = "cancelado"
    assert NACIONAL.consulta(note)["caminho_xml_cancelamento"] == (
        f"{nacional.XML_DIR}/{note.autorizada.xml_name}-cancelamento.xml"
    )


def test_each_kind_renders_its_own_documents() -> None:
    municipal, national = nota(MUNICIPAL_DOC), nota(NACIONAL_DOC)
    municipal.autorizada = MUNICIPAL.authorize(municipal, 1, AT)
    national.autorizada = NACIONAL.authorize(national, 1, AT)
    assert b"abrasf" in MUNICIPAL.xml(municipal, municipal.autorizada)
    assert nacional.NS.encode() in NACIONAL.xml(national, national.autorizada)
    motivo = "Erro na descrição do serviço"
    assert motivo.encode() in MUNICIPAL.cancel_xml(municipal, municipal.autorizada, AT, motivo)
    assert motivo.encode() in NACIONAL.cancel_xml(national, national.autorizada, AT, motivo)
    assert (MUNICIPAL.event, NACIONAL.event) == ("nfse", "nfsen")
