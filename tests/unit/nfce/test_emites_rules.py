"""sandbox.emites_rules: the sandbox's decisions, without a socket."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pypdf import PdfReader

from notaflow.brdocs import access_key_check_digit, valid_access_key
from notaflow.nfce import normalize_nfce
from notaflow.sandbox import emites_documents as documents
from notaflow.sandbox import emites_rules as rules
from testkit.nfce_documents import SPEC_KEYS, valid_nfce

WHEN = datetime(2026, 3, 5, 14, 30, 0, tzinfo=UTC)


def test_a_valid_document_has_no_errors() -> None:
    assert rules.validation_errors(valid_nfce()) == {}
    assert rules.validation_errors(normalize_nfce(valid_nfce())) == {}


def test_errors_use_property_paths() -> None:
    raw = valid_nfce()
    raw["produtos"][1]["ncm"] = "x"
    raw["forma_pagamento"][0]["tipo_de_pagamento"] = "06"
    erros = rules.validation_errors(raw)
    assert erros["produtos[1].ncm"] == ["formato inválido"]
    assert erros["forma_pagamento[0].tipo_de_pagamento"][0].startswith("deve ser um dos valores")


def test_size_messages_follow_the_seed() -> None:
    assert rules.validation_errors(valid_nfce(forma_pagamento=[])) == {
        "forma_pagamento": ["tamanho deve estar entre 1 e 100"]
    }
    erros = rules.validation_errors(valid_nfce(produtos=valid_nfce()["produtos"] * 251))
    assert erros == {"produtos": ["tamanho deve estar entre 1 e 500"]}


def test_fiscal_checks_of_the_sandbox() -> None:
    raw = valid_nfce()
    raw["cliente"]["cpf_cnpj"] = "02558352483"
    raw["cliente"]["endereco"]["codigo_municipio"] = "5300109"
    raw["cliente"]["endereco"]["uf"] = "XX"
    assert rules.validation_errors(raw) == {
        "cliente.cpf_cnpj": ["CPF inválido"],
        "cliente.endereco.codigo_municipio": ["código de município inválido"],
        "cliente.endereco.uf": ["UF inválida"],
    }


@pytest.mark.parametrize("raw", [None, [], "x"])
def test_not_an_object(raw: object) -> None:
    assert rules.validation_errors(raw) == {"": ["o corpo deve ser um objeto JSON"]}


def test_total_and_payment_rule() -> None:
    doc = valid_nfce()
    assert rules.total(doc) == Decimal("30.5")
    assert rules.sefaz_rejection(doc) is None
    doc["forma_pagamento"][0]["valor_do_pagamento"] = 30.49
    assert rules.sefaz_rejection(doc) == rules.REJEICAO_PAGAMENTO
    renamed = valid_nfce()
    renamed["forma_de_pagamento"] = renamed.pop("forma_pagamento")
    assert rules.sefaz_rejection(renamed) is None


def test_ncm_00_is_rejected_by_sefaz() -> None:
    doc = valid_nfce()
    doc["produtos"][1]["ncm"] = "00"
    assert rules.sefaz_rejection(doc) == "471 - Rejeição: Informado NCM=00 indevidamente"


def test_access_key_matches_the_spec_layout() -> None:
    key = rules.access_key(rules.Emitente(), datetime(2018, 9, 1, tzinfo=UTC), 111, 128)
    assert key[:34] == SPEC_KEYS[0][:34]  # UF, AAMM, CNPJ, model, série, número
    assert key[34] == "1"
    assert valid_access_key(key)
    assert key == rules.access_key(rules.Emitente(), datetime(2018, 9, 1, tzinfo=UTC), 111, 128)


def test_access_key_with_another_emitter() -> None:
    emitente = rules.Emitente(cnpj="07504505000132", uf_code="35")
    key = rules.access_key(emitente, WHEN, 1, 999_999_999)
    assert key.startswith("352603075045050001326500199999999")
    assert valid_access_key(key)


def test_protocol_has_15_digits() -> None:
    protocol = rules.protocolo(rules.Emitente(), WHEN, 42)
    assert protocol == "253260000000042"
    assert len(rules.protocolo(rules.Emitente(), WHEN, 10**12 + 5)) == 15


def test_authorize_echoes_and_adds() -> None:
    doc = normalize_nfce(valid_nfce())
    answer = documents.authorize(
        doc,
        emitente=rules.Emitente(),
        id_=7,
        serie=1,
        numero=5,
        protocol_sequence=9,
        issued_at=WHEN,
        public_url="http://x",
    )
    assert answer["status"] == "sucesso"
    assert (answer["id"], answer["nfe_numero"], answer["serie"]) == (7, 5, 1)
    assert answer["resposta_emissao"]["data_emissao"] == "2026-03-05T14:30:00Z"
    assert answer["produtos"][0]["tributacao"]["valor_total_tributos"] == 6.45
    assert answer["natureza_operacao"] == doc["natureza_operacao"]
    assert "tributacao" not in doc["produtos"][0]  # the request is not modified


def test_danfe_is_a_deterministic_pdf() -> None:
    doc = valid_nfce()
    key = rules.access_key(rules.Emitente(), WHEN, 1, 5)
    first = documents.render_danfe(
        documents.Authorized(doc, rules.Emitente(), key, 1, 5, "2" * 15, WHEN)
    )
    second = documents.render_danfe(
        documents.Authorized(doc, rules.Emitente(), key, 1, 5, "2" * 15, WHEN)
    )
    assert first.startswith(b"%PDF") and first == second


def test_danfe_of_500_products_spans_pages() -> None:
    doc = valid_nfce(produtos=valid_nfce()["produtos"] * 250)
    key = rules.access_key(rules.Emitente(), WHEN, 1, 5)
    pdf = documents.render_danfe(
        documents.Authorized(doc, rules.Emitente(), key, 1, 5, "2" * 15, WHEN)
    )
    assert len(PdfReader(io.BytesIO(pdf)).pages) > 1


@pytest.mark.parametrize(
    ("elapsed", "rejection"),
    [(0, None), (1800, None), (1800.5, rules.REJEICAO_PRAZO), (31 * 60, rules.REJEICAO_PRAZO)],
)
def test_cancel_window(elapsed: float, rejection: str | None) -> None:
    assert rules.cancel_rejection(1000.0, False, 1000.0 + elapsed, 1800) == rejection


def test_cancel_of_unknown_or_cancelled_notes() -> None:
    assert rules.cancel_rejection(None, False, 0, 1800) == rules.REJEICAO_NAO_CONSTA
    assert rules.cancel_rejection(0, True, 0, 1800) == rules.REJEICAO_JA_CANCELADA


def test_cancel_errors() -> None:
    assert rules.cancel_errors({"chave_acesso": SPEC_KEYS[1]}) == {}
    assert rules.cancel_errors({"chave_acesso": SPEC_KEYS[1], "motivo": None}) == {}
    nfe = SPEC_KEYS[1][:20] + "55" + SPEC_KEYS[1][22:43]
    nfe += access_key_check_digit(nfe)
    assert valid_access_key(nfe)
    assert rules.cancel_errors({"chave_acesso": nfe}) == {
        "chave_acesso": ["a chave de acesso não é de uma NFC-e (modelo 65)"]
    }
    assert rules.cancel_errors({"chave_acesso": 5}) == {"chave_acesso": ["deve ter 44 dígitos"]}
