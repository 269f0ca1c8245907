"""Unit tests of the pure billing rules (notaflow.billing)."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest

from notaflow import billing as b
from notaflow import schemas
from notaflow.errors import InvalidDocument


def event(kind: str = "issued", at: str = "2026-03-01T10:00:00-03:00", **inv: object) -> dict:
    invoice = {"uid": "F1", "valor": 132.5, "data_vencimento": "2026-03-10", **inv}
    return {"event_id": f"{kind}-{at}", "type": kind, "occurred_at": at, "invoice": invoice}


def test_schemas_follow_the_meta_schema() -> None:
    schemas.meta_check("invoice_event")
    schemas.meta_check("invoice_mail_command")


def test_normalize_hubsoft_fields() -> None:
    e = b.normalize_event(
        {
            "event_id": "x",
            "type": "issued",
            "occurred_at": "2026-03-01T10:00:00Z",
            "invoice": {
                "id_fatura": 44612,
                "nosso_numero": "274764",
                "linha_digitavel": "75691.31662 01006.726101 27476.400018 2 76380000001023",
                "tipo_cobranca": "boleto_bancario",
                "valor": "10,00",
                "data_vencimento": "2018-08-31",
                "detalhamento": {"descricao": "Cobrança SCM", "valor": 10},
                "customer": {"cpf_cnpj": "51.916.585/0001-25", "codigo_cliente": 1099},
            },
        }
    )
    assert e.uid == "44612" and e.state == "waiting"
    assert e.invoice["valor"] == "10.00"
    assert e.invoice["customer"] == {"cpf_cnpj": "51916585000125", "codigo_cliente": "1099"}
    assert e.invoice["detalhamento"]["valor"] == "10.00"


def test_normalize_wuro_fields_total_from_totals() -> None:
    e = b.normalize_event(
        event(
            valor=None,
            number="F-2026-001",
            state="draft",
            lines=[{"descricao": "Plano", "quantidade": 2, "valor_unitario": "50"}],
            totals={"total": "100"},
        )
        | {"invoice": {"uid": "w1", "data_vencimento": "2026-03-10", "totals": {"total": 100},
                       "lines": [{"descricao": "Plano", "quantidade": 2, "valor_unitario": 50}],
                       "state": "draft"}}
    )  # fmt: skip
    assert e.state == "draft"
    assert e.invoice["valor"] == "100.00"
    assert e.invoice["lines"][0]["total"] == "100.00"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.pop("event_id"), "evento"),
        (lambda e: e.update(type="reopened"), "type"),
        (lambda e: e["invoice"].update(data_vencimento="31/08/2018"), "invoice.data_vencimento"),
        (lambda e: e["invoice"].update(data_vencimento="2018-02-30"), "invoice.data_vencimento"),
        (lambda e: e["invoice"].update(customer={"cpf_cnpj": "11111111111"}), "cpf_cnpj"),
        (lambda e: e["invoice"].update(customer={"email": "nope"}), "email"),
        (lambda e: e["invoice"].pop("valor"), "invoice.valor"),
        (lambda e: e["invoice"].update(state="paid"), "invoice.state"),
        (lambda e: e.update(occurred_at="yesterday..."), "occurred_at"),
        (lambda e: e["invoice"].update(number="12\x0034"), "invoice.number"),
        (lambda e: e["invoice"].update(extra={"a\x00": 1}), "invoice.extra.a"),
    ],
)
def test_invalid_events_name_the_field(mutate: object, field: str) -> None:
    raw = event()
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(InvalidDocument) as err:
        b.normalize_event(raw)
    assert field in err.value.field


def test_paid_event_defaults_payment_date_to_its_day_in_brasilia() -> None:
    e = b.normalize_event(event("paid", "2026-03-05T01:00:00Z"))
    assert e.state == "paid" and e.invoice["data_pagamento"] == "2026-03-04"


T0 = datetime.fromisoformat("2026-03-01T10:00:00+00:00")


def pos(state: str, minutes: int = 0, seq: int | None = None) -> b.Position:
    return b.Position(state, seq, T0 + timedelta(minutes=minutes))


def test_precedence_by_time_and_rank() -> None:
    assert b.should_apply(None, pos("waiting"))
    assert b.should_apply(pos("waiting", 0), pos("paid", 1))
    assert not b.should_apply(pos("paid", 1), pos("waiting", 0))  # late issued
    assert not b.should_apply(pos("paid", 1), pos("waiting", 5))  # time cannot reopen paid
    assert b.should_apply(pos("waiting", 0), pos("paid", 0))  # same instant: paid wins
    assert not b.should_apply(pos("paid", 0), pos("paid", 0))  # duplicate
    assert b.should_apply(pos("paid", 1), pos("inactive", 2))
    assert not b.should_apply(pos("waiting", 0), pos("draft", 5))  # never back to draft


def test_precedence_by_sequence_when_both_have_one() -> None:
    assert b.should_apply(pos("paid", 5, seq=2), pos("waiting", 0, seq=3))  # source reopened
    assert not b.should_apply(pos("waiting", 0, seq=3), pos("paid", 9, seq=2))
    assert not b.should_apply(pos("waiting", 0, seq=3), pos("waiting", 0, seq=3))


def test_merge_loser_only_fills_gaps() -> None:
    assert b.merge({"a": 1}, {"a": 2, "b": 3}, wins=True) == {"a": 2, "b": 3}
    assert b.merge({"a": 1}, {"a": 2, "b": 3}, wins=False) == {"a": 1, "b": 3}


def test_render_default_template_escapes_values() -> None:
    inv = {"uid": "F1", "number": "42", "valor": "1234.5", "data_emissao": "2026-03-01",
           "data_vencimento": "2026-03-10", "customer": {"nome": "Ana <b>&</b>"}}  # fmt: skip
    v = b.template_variables(inv, "ACME", "https://x/h?t=1&a=2", "https://x/p")
    mail = b.render_mail(b.DEFAULT_TEMPLATES["send_invoice"], v)
    assert mail.subject == "Fatura 42 - ACME"
    assert "Ana &lt;b&gt;&amp;&lt;/b&gt;" in mail.html
    assert "R$ 1.234,50" in mail.html and "10/03/2026" in mail.html
    assert 'href="https://x/h?t=1&amp;a=2"' in mail.html
    assert "Ana <b>&</b>" in mail.text and "[" not in mail.text


def test_render_custom_subject_and_plain_content() -> None:
    v = b.template_variables(
        {"uid": "F1", "valor": 1, "data_vencimento": "2026-01-01"}, "X", "h", "p"
    )
    mail = b.render_mail(b.DEFAULT_TEMPLATES["send_invoice"], v, "Sua fatura [facture-numero]",
                         "Olá [contact-nom]\n\nPDF: [lien-pdf] [desconhecida]")  # fmt: skip
    assert mail.subject == "Sua fatura F1"
    assert mail.html == "<p>Olá cliente</p><p>PDF: p [desconhecida]</p>"


def test_dunning_step_selection() -> None:
    due = date(2026, 3, 10)
    assert b.dunning_step(due, date(2026, 3, 12), (3, 10)) is None
    assert b.dunning_step(due, date(2026, 3, 13), (3, 10)) == 3
    assert b.dunning_step(due, date(2026, 3, 19), (3, 10)) == 3
    assert b.dunning_step(due, date(2026, 3, 20), (3, 10)) == 10
    assert b.dunning_step(due, date(2026, 5, 1), (3, 10)) == 10
    with pytest.raises(ValueError):
        b.parse_steps([0])


def test_signed_links() -> None:
    token = b.sign_link("k", "acme", "F1", now=1000)
    assert b.verify_link("k", token, now=1001) == ("acme", "F1")
    assert b.verify_link("other", token, now=1001) is None
    assert b.verify_link("k", token, now=1000 + b.LINK_TTL + 1) is None
    assert b.verify_link("k", token[:-2] + "AA", now=1001) is None
    assert b.verify_link("k", "garbage", now=1001) is None
    assert b.verify_link("", token, now=1001) is None
