"""The e-mails are compat32 messages (`email.mime`), not `EmailMessage`: nothing parses or
refolds a header through the header registry, when rendering or when aiosmtplib flattens
(`mail_templates`' docstring). These tests hold what the recipient gets: the bytes parsed back
with the modern parser, as a mail client would read them."""

from __future__ import annotations

import email
import email.header
import gc
import re
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.policy import default
from html import escape
from typing import cast

import pytest
from aiosmtplib.email import flatten_message

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
PDF = b"%PDF-1.4\n\x00\xff\xfe binary " * 40
BOUNDARY = re.compile(r"={15}\d{19}==")


def _render(
    kind: str,
    issuer: str = "Empresa Ação Ltda",
    sender: str = "Notas Fiscais <nfse@notaflow.example>",
    recipients: tuple[str, ...] = ("Fulâno <t@x.com>", "outro@x.com"),
    document: dict[str, object] = DOC,
) -> Message:
    common = {
        "issuer_name": issuer,
        "sender": sender,
        "recipients": list(recipients),
        "message_id_domain": "notaflow.example",
        "now": WHEN,
        "message_id": "<nf1@notaflow.example>",
    }
    if kind == "nfce":
        return render_nfce_email("autorizada", VIEW, document, danfe=PDF, **common)  # type: ignore[arg-type]
    links = NfseLinks(VIEW["url"], "https://api.example/v2/nfse/r1.xml", None)
    return render_nfse_email(kind, VIEW, document, links, **common)  # type: ignore[arg-type]


def _received(msg: Message) -> EmailMessage:
    """What a mail client reads: the bytes aiosmtplib sends, parsed by the modern parser."""
    raw = flatten_message(msg)
    return cast(EmailMessage, email.message_from_bytes(raw, policy=default))


KINDS = ["autorizada", "cancelada", "copia", "nfce"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_compat32_message_which_aiosmtplib_flattens_under_compat32(kind: str) -> None:
    msg = _render(kind)
    # aiosmtplib's flatten_message takes the compat32 path for anything not an EmailMessage.
    assert isinstance(msg, Message) and not isinstance(msg, EmailMessage)
    assert all(isinstance(value, str) for part in msg.walk() for value in part.values())
    got = _received(msg)
    assert not got.defects and all(not part.defects for part in got.walk())
    assert got["MIME-Version"] == "1.0"
    assert [p["MIME-Version"] for p in got.walk()][1:] == [None] * (len(list(got.walk())) - 1)


@pytest.mark.parametrize("kind", KINDS)
def test_every_multipart_has_its_boundary_before_flattening(kind: str) -> None:
    multiparts = [p for p in _render(kind).walk() if p.is_multipart()]
    assert len(multiparts) == (2 if kind == "nfce" else 1)
    boundaries = [p.get_boundary() for p in multiparts]
    assert all(b is not None and BOUNDARY.fullmatch(b) for b in boundaries), boundaries
    assert len(set(boundaries)) == len(boundaries)


@pytest.mark.parametrize("kind", KINDS)
def test_flattening_builds_no_header_classes(kind: str) -> None:
    """The modern policy's registry built header classes (and their cycles) per e-mail; the
    compat32 generator builds none, whoever flattens."""
    flatten_message(_render(kind))  # warm: whatever the first call imports or caches
    gc.collect()
    before = sum(1 for o in gc.get_objects() if isinstance(o, type))
    for _ in range(20):
        flat = flatten_message(_render(kind))
    after = sum(1 for o in gc.get_objects() if isinstance(o, type))
    assert after - before < 5  # not one per message
    parsed = email.message_from_bytes(flat, policy=default)
    assert parsed.is_multipart() and parsed.get_boundary()
    assert parsed.get_boundary().encode() in flat


@pytest.mark.parametrize("kind", KINDS)
def test_headers_as_the_recipient_reads_them(kind: str) -> None:
    got = _received(_render(kind))
    subjects = {
        "autorizada": "NFS-e nº 123 autorizada — Empresa Ação Ltda",
        "cancelada": "NFS-e nº 123 cancelada — Empresa Ação Ltda",
        "copia": "Cópia da NFS-e nº 123 — Empresa Ação Ltda",
        "nfce": "NFC-e nº 123 autorizada — Empresa Ação Ltda",
    }
    assert got["Subject"] == subjects[kind]
    assert [(a.display_name, a.addr_spec) for a in got["From"].addresses] == [
        ("Notas Fiscais", "nfse@notaflow.example")
    ]
    assert [(a.display_name, a.addr_spec) for a in got["To"].addresses] == [
        ("Fulâno", "t@x.com"),
        ("", "outro@x.com"),
    ]
    assert got["Date"].datetime == WHEN
    assert got["Message-ID"] == "<nf1@notaflow.example>"
    assert got["Auto-Submitted"] == "auto-generated"
    assert got["Bcc"] is None


@pytest.mark.parametrize("kind", KINDS)
def test_bodies_as_the_recipient_reads_them(kind: str) -> None:
    got = _received(_render(kind))
    expected_type = "multipart/mixed" if kind == "nfce" else "multipart/alternative"
    assert got.get_content_type() == expected_type
    plain, html = got.get_body(("plain",)), got.get_body(("html",))
    assert plain is not None and html is not None
    for part in (plain, html):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    text = plain.get_content()
    assert "Empresa Ação Ltda" in text and "R$ " in text
    if kind == "nfce":
        assert text.startswith("Olá, Zé,\n") and "O DANFE (PDF) da nota segue em anexo." in text
    else:
        assert text.startswith("Olá, Fulâno de Tál,\n") and "Serviço\nem duas linhas" in text
    assert "<p>Olá," in html.get_content() and "Empresa Ação Ltda" in html.get_content()


def test_the_nfce_danfe_is_attached() -> None:
    got = _received(_render("nfce"))
    alternative, attachment = got.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == "NFCe-123.pdf"
    assert attachment.get_content() == PDF
    assert [a.get_filename() for a in got.iter_attachments()] == ["NFCe-123.pdf"]


def test_without_a_danfe_the_nfce_is_the_alternative_alone() -> None:
    msg = render_nfce_email(
        "cancelada", VIEW, DOC, "ACME", "n@x.example", ["z@x.com"], "x.example", now=WHEN
    )
    got = _received(msg)
    assert got.get_content_type() == "multipart/alternative"
    assert list(got.iter_attachments()) == []
    plain = got.get_body(("plain",))
    assert plain is not None and "CANCELADA" in plain.get_content()
    assert "anexo" not in plain.get_content()


@pytest.mark.parametrize(
    ("issuer", "sender_name"),
    [
        ("Empresa Ação & Filhos Ltda", "Notas Fiscais — São João"),
        ("Pão de Açúcar Comércio Ltda", "Ç"),
        ("Cooperativa de Eletrificação Rural 'Coração' ÁÉÍÓÚ çãõ", 'Avó "Zezé", ME'),
    ],
)
@pytest.mark.parametrize("kind", ["autorizada", "nfce"])
def test_non_ascii_names_round_trip_exactly(issuer: str, sender_name: str, kind: str) -> None:
    from notaflow.consumers.providers.mailer import SmtpConfig

    sender = SmtpConfig(host="h", sender_address="nf@acme.example", sender_name=sender_name)
    got = _received(_render(kind, issuer=issuer, sender=sender.from_header))
    assert got["Subject"].endswith(f" — {issuer}")
    [from_] = got["From"].addresses
    assert (from_.display_name, from_.addr_spec) == (sender_name, "nf@acme.example")
    plain, html = got.get_body(("plain",)), got.get_body(("html",))
    assert plain is not None and html is not None
    assert f"Mensagem enviada automaticamente em nome de {issuer}." in plain.get_content()
    assert escape(issuer) in html.get_content()


LONG = "Provedor de Internet Comunicação e Serviços Ltda — Filial São José dos Campos " * 4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("issuer", "sender"),
    [
        ("Empresa Ação Ltda", "Notas Fiscais <nfse@notaflow.example>"),
        (LONG, f'"{LONG.strip()}" <nfse@notaflow.example>'),
    ],
)
def test_seven_bit_and_lines_of_at_most_998_bytes(kind: str, issuer: str, sender: str) -> None:
    """No server needs 8BITMIME or SMTPUTF8 (RFC 5322: a line is at most 998 characters)."""
    document = {**DOC, "servico": {**DOC["servico"], "discriminacao": "ção " * 600}}
    msg = _render(kind, issuer=issuer, sender=sender, document=document)
    for raw in (msg.as_bytes(), flatten_message(msg)):
        assert raw.isascii()
        assert max(len(line) for line in raw.split(b"\n")) <= 998
    got = _received(msg)
    assert got["Subject"].endswith(LONG.strip() if issuer == LONG else issuer)
    assert not got.defects


def test_long_names_are_cut_in_encoded_words_of_at_most_75_characters() -> None:
    name = LONG.strip()
    msg = _render("autorizada", issuer=name, sender=f'"{name}" <nfse@notaflow.example>')
    words = re.findall(rb"=\?utf-8\?[bq]\?[^?]*\?=", flatten_message(msg), re.IGNORECASE)
    assert words and all(len(w) <= 75 for w in words)
    # RFC 2047 decoding (mail clients; email.header): the words join without a space between.
    # (CPython's modern address parser keeps one between encoded-words, so it is not used.)
    header = email.header.make_header(email.header.decode_header(msg["From"]))
    assert str(header) == f"{name} <nfse@notaflow.example>"


def test_header_injection_through_any_value_adds_no_header() -> None:
    msg = _render(
        "nfce",
        issuer="ACME\r\nBcc: victim@example.com",
        sender="Notas\r\nX-Evil: 1 <nfse@notaflow.example>",
        recipients=("t@x.com\r\nBcc: victim@example.com",),
        document={**DOC, "cliente": {"nome": "Zé\r\nX-Evil: 2"}},
    )
    got = _received(msg)
    assert got["Bcc"] is None and got["X-Evil"] is None
    assert got["Subject"] == "NFC-e nº 123 autorizada — ACME Bcc: victim@example.com"
    assert [k for k in got if k.lower() not in ("content-type", "mime-version")] == [
        "Subject",
        "From",
        "To",
        "Date",
        "Message-ID",
        "Auto-Submitted",
    ]


def test_an_international_address_goes_as_utf8() -> None:
    """An address that is not ASCII cannot be written in ASCII: it goes as UTF-8 (RFC 6532),
    as before, over a server that offers SMTPUTF8 (aiosmtplib requires it for the envelope)."""
    msg = _render("autorizada", recipients=("José <josé@exemplo.com.br>",))
    raw = flatten_message(msg, utf8=True)
    assert "josé@exemplo.com.br".encode() in raw
    got = email.message_from_string(raw.decode("utf-8"), policy=default)  # RFC 6532: UTF-8
    assert [a.addr_spec for a in got["To"].addresses] == ["josé@exemplo.com.br"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ASCII\n",
        "Olá, José & Filhos — R$ 1.234,56\nsegunda linha \n",
        "a=b, um ponto no início:\n.\n" + "ção" * 60 + "\n" + "x" * 300,
        "<p>Olá</p>\n<table><tr><td>Serviço</td></tr></table>\n",
    ],
)
@pytest.mark.parametrize("subtype", ["plain", "html"])
def test_the_parts_are_byte_for_byte_what_email_mime_makes(text: str, subtype: str) -> None:
    """`_text_part` and `_multipart` write the headers MIMEText and MIMEMultipart would, and
    the body through the same encoder: the bytes sent are the same."""
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    from notaflow.consumers import mail_templates as m

    ours = m._multipart("alternative", [m._text_part(text, subtype)])
    boundary = ours.get_boundary()
    theirs_part = MIMEText(text, subtype, m._BODY_CHARSET)  # type: ignore[arg-type]
    del theirs_part["MIME-Version"]
    theirs = MIMEMultipart("alternative", boundary=boundary, _subparts=[theirs_part])
    for cte_type in ("7bit", "8bit"):
        assert flatten_message(ours, cte_type=cte_type) == flatten_message(
            theirs, cte_type=cte_type
        )
