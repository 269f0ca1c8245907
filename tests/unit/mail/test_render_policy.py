"""The e-mails are rendered with a header registry that makes each header class once
(`mail_templates.POLICY`): the bytes are those of the standard library's default policy."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default

import pytest

from notaflow.consumers import mail_templates
from notaflow.consumers.mail_templates import NfseLinks, render_nfce_email, render_nfse_email

VIEW = {
    "numero": "123",
    "ref": "r1",
    "codigo_verificacao": "ABC-9",
    "data_emissao": "2026-01-01T10:00:00-03:00",
    "url": "https://prefeitura.example/nota?id=1",
    "serie": "1",
    "chave_nfe": "3" * 44,
    "protocolo": "135",
    "cnpj_emitente": "11222333000181",
}
DOC = {
    "prestador": {"cnpj": "11222333000181"},
    "tomador": {"razao_social": "Fulâno de Tál", "cpf": "12345678909", "email": "t@x.com"},
    "servico": {"valor_servicos": 1234.5, "discriminacao": "Serviço\nem duas linhas"},
    "cliente": {"nome": "Zé", "email": "z@x.com"},
    "produtos": [{"valor_total_produto": 10}],
}
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _render(kind: str) -> EmailMessage:
    common = {
        "issuer_name": "Empresa Ação Ltda",
        "sender": "Notas Fiscais <nfse@notaflow.example>",
        "recipients": ["Fulâno <t@x.com>", "outro@x.com"],
        "message_id_domain": "notaflow.example",
        "now": WHEN,
        "message_id": "<nf1@notaflow.example>",
    }
    if kind == "nfce":
        return render_nfce_email("autorizada", VIEW, DOC, danfe=b"%PDF-1.4 x", **common)
    links = NfseLinks(VIEW["url"], "https://api.example/v2/nfse/r1.xml", None)
    return render_nfse_email(kind, VIEW, DOC, links, **common)  # type: ignore[arg-type]


def _bytes(msg: EmailMessage) -> bytes:
    # The MIME boundaries are random: the same placeholder for both.
    return re.sub(rb"=+\d+==", b"BOUNDARY", msg.as_bytes())


@pytest.mark.parametrize("kind", ["autorizada", "cancelada", "copia", "nfce"])
def test_the_bytes_are_the_default_policys(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = _bytes(_render(kind))
    monkeypatch.setattr(mail_templates, "POLICY", default)
    assert ours == _bytes(_render(kind))
    assert b"=?utf-8?" in ours.split(b"\nFrom:")[0]  # a non-ASCII Subject encoded


def test_each_header_class_is_made_once() -> None:
    first, second = _render("autorizada"), _render("autorizada")
    for name in ("Subject", "From", "To", "Date", "Message-ID", "Content-Type"):
        assert type(first[name]) is type(second[name]), name
    parts = [p for p in first.walk() if not p.is_multipart()]
    assert len(parts) == 2 and all(p.policy is mail_templates.POLICY for p in parts)
