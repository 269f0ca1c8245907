"""Rendering of the NFS-e notification e-mails: pure; what the recipient gets (the bytes parsed
back with the email package's modern parser) is checked, not the message object."""

from __future__ import annotations

import email
from datetime import UTC, datetime
from decimal import Decimal
from email.message import EmailMessage, Message
from email.policy import default as default_policy
from typing import Any, cast

import pytest

from notaflow.consumers.mail_templates import (
    NfseKind,
    NfseLinks,
    format_brl,
    format_cnpj,
    format_cpf,
    format_document,
    render_nfse_email,
)

VIEW: dict[str, Any] = {
    "cnpj_prestador": "51916585000125",
    "ref": "nfs-2",
    "status": "autorizado",
    "numero": "233",
    "codigo_verificacao": "DU1M-M2Y",
    "data_emissao": "2019-05-27T00:00:00-03:00",
    "url": "https://prefeitura.example/Default.aspx?doc=51916585000125&num=233",
    "url_danfse": "https://api.example/danfse/233.pdf",
    "caminho_xml_nota_fiscal": "/notas_fiscais_servico/NFSe233.xml",
}
DOCUMENT: dict[str, Any] = {
    "prestador": {"cnpj": "51916585000125", "inscricao_municipal": "12345"},
    "tomador": {
        "cnpj": "07504505000132",
        "razao_social": "Acras Tecnologia da Informação LTDA",
        "email": "contato@acras.example",
    },
    "servico": {"valor_servicos": 1234.5, "discriminacao": "Suporte técnico\nmaio/2019"},
}
LINKS = NfseLinks(
    espelho_url=VIEW["url"],
    xml_url="https://api.example" + VIEW["caminho_xml_nota_fiscal"],
    danfse_url=VIEW["url_danfse"],
)
NOW = datetime(2024, 3, 1, 12, 30, tzinfo=UTC)


def render(
    kind: NfseKind = "autorizada",
    view: dict[str, Any] | None = None,
    document: dict[str, Any] | None = None,
    links: NfseLinks = LINKS,
    issuer: str = "ACME LTDA",
) -> Message:
    return render_nfse_email(
        kind,
        view if view is not None else VIEW,
        document if document is not None else DOCUMENT,
        links,
        issuer_name=issuer,
        sender="ACME Notas <nfse@acme.com.br>",
        recipients=["contato@acras.example", "financeiro@acras.example"],
        message_id_domain="acme.com.br",
        now=NOW,
        message_id="<fixed@acme.com.br>",
    )


def reparse(msg: Message) -> EmailMessage:
    """What the recipient reads: the message's bytes, parsed back."""
    return cast(EmailMessage, email.message_from_bytes(msg.as_bytes(), policy=default_policy))


def bodies(msg: EmailMessage) -> tuple[str, str]:
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    return plain.get_content(), html.get_content()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1234.5, "R$ 1.234,50"),
        ("1234.56", "R$ 1.234,56"),
        (Decimal("1234567.891"), "R$ 1.234.567,89"),
        (0, "R$ 0,00"),
        (1.0, "R$ 1,00"),
        (0.1, "R$ 0,10"),
        ("0.005", "R$ 0,01"),  # half up, as on an invoice
        (999.999, "R$ 1.000,00"),
        (" 12 ", "R$ 12,00"),
        (-5.5, "-R$ 5,50"),
    ],
)
def test_format_brl(value: Any, expected: str) -> None:
    assert format_brl(value) == expected


@pytest.mark.parametrize("bad", ["abc", "", "NaN", "Infinity", True])
def test_format_brl_rejects_non_amounts(bad: Any) -> None:
    with pytest.raises(ValueError):
        format_brl(bad)


def test_document_formatting() -> None:
    assert format_cnpj("51916585000125") == "51.916.585/0001-25"
    assert format_cnpj("51.916.585/0001-25") == "51.916.585/0001-25"
    assert format_cnpj("12abc34501de35") == "12.ABC.345/01DE-35"  # alphanumeric CNPJ (2026)
    assert format_cnpj("123") == "123"  # unknown shapes are shown as given
    assert format_cpf("12345678909") == "123.456.789-09"
    assert format_cpf("123.456.789-09") == "123.456.789-09"
    assert format_document({"cpf": "12345678909"}) == "CPF 123.456.789-09"
    assert format_document({"cnpj": "07504505000132"}) == "CNPJ 07.504.505/0001-32"
    assert format_document({}) == ""


@pytest.mark.parametrize(
    ("kind", "subject"),
    [
        ("autorizada", "NFS-e nº 233 autorizada — ACME LTDA"),
        ("cancelada", "NFS-e nº 233 cancelada — ACME LTDA"),
        ("copia", "Cópia da NFS-e nº 233 — ACME LTDA"),
    ],
)
def test_subjects_survive_the_wire(kind: NfseKind, subject: str) -> None:
    raw = render(kind).as_bytes()
    assert raw.isascii()  # encoded words and quoted-printable / base64, 7-bit safe
    assert reparse(render(kind))["Subject"] == subject


def test_headers() -> None:
    msg = reparse(render())
    assert msg["From"].addresses[0].addr_spec == "nfse@acme.com.br"
    assert [a.addr_spec for a in msg["To"].addresses] == [
        "contato@acras.example",
        "financeiro@acras.example",
    ]
    assert msg["Message-ID"] == "<fixed@acme.com.br>"
    assert msg["Date"].datetime == NOW
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in msg.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())


def test_message_id_and_date_are_generated_when_not_given() -> None:
    msg = reparse(
        render_nfse_email(
            "copia",
            VIEW,
            DOCUMENT,
            LINKS,
            "ACME LTDA",
            "n@acme.com.br",
            ["a@b.example"],
            "acme.com.br",
        )
    )
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@acme.com.br>")
    assert msg["Date"].datetime.tzinfo is not None


def test_body_tells_which_note() -> None:
    plain, html = bodies(reparse(render()))
    for text in (plain, html):
        assert "233" in text
        assert "DU1M-M2Y" in text
        assert "27/05/2019" in text
        assert "ACME LTDA" in text
        assert "51.916.585/0001-25" in text
        assert "07.504.505/0001-32" in text
        assert "R$ 1.234,50" in text
        assert "Suporte técnico" in text
    assert "Acras Tecnologia da Informação LTDA" in plain
    assert "autorizada" in plain


def test_links_present() -> None:
    plain, html = bodies(reparse(render()))
    assert LINKS.espelho_url in plain
    assert LINKS.xml_url in plain
    assert LINKS.danfse_url and LINKS.danfse_url in plain
    assert 'href="https://prefeitura.example/Default.aspx?doc=51916585000125&amp;num=233"' in html
    assert f'href="{LINKS.xml_url}"' in html
    assert "DANFSe" in html


def test_danfse_link_optional() -> None:
    plain, html = bodies(reparse(render(links=NfseLinks("https://p.example/1", "https://x/1"))))
    assert "DANFSe" not in plain and "DANFSe" not in html


def test_kinds_say_what_happened() -> None:
    assert "CANCELADA" in bodies(reparse(render("cancelada")))[0]
    assert "cópia" in bodies(reparse(render("copia")))[0]
    with pytest.raises(ValueError):
        render("rascunho")  # type: ignore[arg-type]


def test_hostile_values_are_escaped_in_html() -> None:
    hostile = '<script>alert("x")</script> & <img src=x onerror=1>'
    doc = {**DOCUMENT, "tomador": {**DOCUMENT["tomador"], "razao_social": hostile}}
    doc["servico"] = {**DOCUMENT["servico"], "discriminacao": "<b>negrito</b>"}
    _, html = bodies(reparse(render(document=doc, issuer="Ação <Ltda>")))
    assert "<script>" not in html and "<img" not in html and "<b>negrito" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img" in html
    assert "Ação &lt;Ltda&gt;" in html


def test_non_http_links_are_not_clickable() -> None:
    links = NfseLinks("javascript:alert(1)", "https://x.example/a.xml")
    _, html = bodies(reparse(render(links=links)))
    assert 'href="javascript' not in html
    assert "javascript:alert(1)" in html  # still visible as text


def test_header_injection_is_neutralised() -> None:
    msg = reparse(render(issuer="ACME\r\nBcc: victim@example.com"))
    assert msg["Bcc"] is None
    assert msg["Subject"] == "NFS-e nº 233 autorizada — ACME Bcc: victim@example.com"


@pytest.mark.parametrize("where", ["tomador", "recipient", "sender"])
def test_header_injection_through_names_and_addresses_is_neutralised(where: str) -> None:
    evil = "\r\nBcc: victim@example.com\nX-Evil: 1"
    doc = {**DOCUMENT, "tomador": {**DOCUMENT["tomador"], "razao_social": "Acras" + evil}}
    raw = render_nfse_email(
        "autorizada",
        VIEW,
        doc if where == "tomador" else DOCUMENT,
        LINKS,
        "ACME LTDA",
        "ACME" + evil + " <nfse@acme.com.br>" if where == "sender" else "nfse@acme.com.br",
        ["contato@acras.example" + evil if where == "recipient" else "contato@acras.example"],
        "acme.com.br",
    ).as_bytes()
    msg = reparse_bytes(raw)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert not any(line.startswith((b"Bcc", b"X-Evil")) for line in raw.split(b"\n"))
    if where == "tomador":
        assert "Olá, Acras Bcc: victim@example.com X-Evil: 1," in bodies(msg)[0]


def reparse_bytes(raw: bytes) -> EmailMessage:
    return cast(EmailMessage, email.message_from_bytes(raw, policy=default_policy))


def test_cpf_tomador_and_missing_fields() -> None:
    doc = {
        "prestador": {"cnpj": "51916585000125"},
        "tomador": {"cpf": "12345678909"},
        "servico": {},
    }
    view = {"numero": "7", "cnpj_prestador": "51916585000125"}
    plain, _ = bodies(reparse(render(view=view, document=doc)))
    assert "CPF 123.456.789-09" in plain
    assert "Valor" not in plain and "Código de verificação" not in plain
    assert plain.startswith("Olá,\n")


def test_prestador_cnpj_falls_back_to_the_view() -> None:
    doc = {**DOCUMENT, "prestador": {}}
    plain, _ = bodies(reparse(render(document=doc)))
    assert "ACME LTDA — CNPJ 51.916.585/0001-25" in plain


def _without_boundaries(raw: bytes) -> bytes:
    # MIME boundaries are random by design; everything else must repeat byte for byte.
    return b"\n".join(line for line in raw.split(b"\n") if b"===" not in line)


def test_deterministic_given_now_and_message_id() -> None:
    assert _without_boundaries(render().as_bytes()) == _without_boundaries(render().as_bytes())


def test_empty_links_are_left_out() -> None:
    plain, html = bodies(reparse(render(links=NfseLinks("", "  ", None))))
    assert "XML" not in plain and "prefeitura:" not in plain
    assert "<ul>" not in html and "href" not in html


def test_flattening_for_smtp_builds_no_header_classes() -> None:
    """aiosmtplib flattened an `EmailMessage` under `email.policy.SMTP`, whose registry built
    header classes (and their cycles) per e-mail; a compat32 message builds none."""
    import gc

    from aiosmtplib.email import flatten_message

    flatten_message(render())  # warm: whatever the first call imports or caches
    gc.collect()
    before = sum(1 for o in gc.get_objects() if isinstance(o, type))
    for _ in range(20):
        flat = flatten_message(render())
    after = sum(1 for o in gc.get_objects() if isinstance(o, type))
    assert after - before < 5  # not one per message
    parsed = email.message_from_bytes(flat, policy=default_policy)
    assert parsed.is_multipart() and parsed.get_boundary()
    assert parsed.get_boundary().encode() in flat
