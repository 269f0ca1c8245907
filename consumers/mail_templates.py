"""The notification e-mails about an NFS-e or an NFC-e, in Portuguese: pure functions, no I/O.

`render_nfse_email` builds a complete MIME message (text/plain with a text/html alternative,
UTF-8) that tells the reader which note it is about (número, código de verificação, prestador,
tomador, valor) and where to get it; `render_nfce_email` the same for an NFC-e, with its DANFE
attached. Only Message-ID and Date depend on the clock, and tests can pass both.

The messages are the standard library's compat32 `Message`s, not `EmailMessage`: the modern
policy parses every header through the header registry, runs the bodies through the content
manager and refolds every header again when the message is flattened (0.90 ms of CPU per NFS-e
e-mail, rendered and flattened: a fifth of the notification consumer). Here every header is
stored as it is written, already encoded (RFC 2047 encoded-words for the Subject and display
names) and folded, the bodies are quoted-printable, each part carries the headers `email.mime`
would write (`_text_part`, `_multipart`: a test holds the bytes to it) and each multipart its
boundary from the start; the mailer flattens them without refolding (`providers/mail_wire`).
0.26 ms per e-mail, rendered and flattened; the recipient gets the same message, 7-bit clean.
"""

from __future__ import annotations

import functools
import html
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from email.charset import BASE64, QP, Charset
from email.header import Header
from email.message import Message
from email.mime.application import MIMEApplication
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import Any, Literal

from notaflow.brdocs import clean_document
from notaflow.consumers import quoted_printable

__all__ = [
    "NfseKind",
    "NfseLinks",
    "format_brl",
    "format_cnpj",
    "format_cpf",
    "format_document",
    "render_nfse_email",
]

NfseKind = Literal["autorizada", "cancelada", "copia"]


@dataclass(frozen=True)
class NfseLinks:
    espelho_url: str  # the prefeitura's page of the note (Focus `url`)
    xml_url: str
    danfse_url: str | None = None  # PDF, only some municipalities have one


_CENT = Decimal("0.01")
_WHITESPACE = re.compile(r"\s+")


def format_brl(value: Decimal | int | float | str) -> str:
    """Brazilian currency: 1234.5 -> "R$ 1.234,50". Floats go through str() (their shortest
    repr) so 0.1 stays 0.1; no float arithmetic."""
    if isinstance(value, bool):
        raise ValueError(f"not an amount: {value!r}")
    try:
        amount = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not an amount: {value!r}")
    amount = amount.quantize(_CENT, rounding=ROUND_HALF_UP)
    sign = "-" if amount < 0 else ""
    us = f"{abs(amount):,.2f}"  # Decimal formatting is exact
    return f"{sign}R$ {us.replace(',', '_').replace('.', ',').replace('_', '.')}"


def format_cnpj(value: str) -> str:
    """51916585000125 -> 51.916.585/0001-25 (also the alphanumeric CNPJ of 2026)."""
    c = clean_document(value)
    if len(c) != 14:
        return value
    return f"{c[:2]}.{c[2:5]}.{c[5:8]}/{c[8:12]}-{c[12:]}"


def format_cpf(value: str) -> str:
    """12345678909 -> 123.456.789-09."""
    c = clean_document(value)
    if len(c) != 11 or not c.isdigit():
        return value
    return f"{c[:3]}.{c[3:6]}.{c[6:9]}-{c[9:]}"


def format_document(party: Mapping[str, Any]) -> str:
    """ "CNPJ 51.916.585/0001-25", "CPF 123.456.789-09" or "" for a party of an NFS-e."""
    if party.get("cnpj"):
        return f"CNPJ {format_cnpj(str(party['cnpj']))}"
    if party.get("cpf"):
        return f"CPF {format_cpf(str(party['cpf']))}"
    return ""


def _format_date(value: Any) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(str(value)).strftime("%d/%m/%Y")
    except ValueError:
        return str(value)


def _one_line(value: Any) -> str:
    # Header values must not carry line breaks (header injection); body lines stay readable.
    return _WHITESPACE.sub(" ", str(value)).strip()


_INTRO: dict[str, str] = {
    "autorizada": "A nota fiscal de serviço eletrônica abaixo foi autorizada pela prefeitura.",
    "cancelada": (
        "A nota fiscal de serviço eletrônica abaixo foi CANCELADA e não tem mais validade fiscal."
    ),
    "copia": "Segue uma cópia da nota fiscal de serviço eletrônica abaixo, conforme solicitado.",
}


def _subject(kind: str, numero: str, issuer: str) -> str:
    if kind == "autorizada":
        return f"NFS-e nº {numero} autorizada — {issuer}"
    if kind == "cancelada":
        return f"NFS-e nº {numero} cancelada — {issuer}"
    return f"Cópia da NFS-e nº {numero} — {issuer}"


def render_nfse_email(
    kind: NfseKind,
    view: Mapping[str, Any],
    document: Mapping[str, Any],
    links: NfseLinks,
    issuer_name: str,
    sender: str,
    recipients: Sequence[str],
    message_id_domain: str,
    *,
    now: datetime | None = None,
    message_id: str | None = None,
) -> Message:
    """The e-mail about one note. `view` is the Focus GET view, `document` the stored request
    (prestador, tomador, servico); `sender` a ready `From` value ("Name <addr>")."""
    if kind not in _INTRO:
        raise ValueError(f"unknown e-mail kind {kind!r}")
    if not recipients:
        raise ValueError("an e-mail needs at least one recipient")
    prestador: Mapping[str, Any] = document.get("prestador") or {}
    tomador: Mapping[str, Any] = document.get("tomador") or {}
    servico: Mapping[str, Any] = document.get("servico") or {}

    issuer = _one_line(issuer_name)
    numero = _one_line(view.get("numero") or view.get("ref") or "?")
    prestador_doc = format_document(prestador) or (
        f"CNPJ {format_cnpj(str(view['cnpj_prestador']))}" if view.get("cnpj_prestador") else ""
    )
    tomador_name = _one_line(tomador.get("razao_social") or "")
    tomador_doc = format_document(tomador)
    valor = servico.get("valor_servicos")

    # (label, value) in reading order; empty values are left out.
    facts: list[tuple[str, str]] = [
        ("NFS-e nº", numero),
        ("Código de verificação", _one_line(view.get("codigo_verificacao") or "")),
        ("Data de emissão", _format_date(view.get("data_emissao") or document.get("data_emissao"))),
        ("Prestador", " — ".join(p for p in (issuer, prestador_doc) if p)),
        ("Tomador", " — ".join(p for p in (tomador_name, tomador_doc) if p)),
        ("Valor dos serviços", format_brl(valor) if valor is not None else ""),
        ("Discriminação", str(servico.get("discriminacao") or "").strip()),
    ]
    facts = [(label, value) for label, value in facts if value]
    link_rows = [
        (label, url.strip())
        for label, url in (
            ("Consultar a nota na prefeitura", links.espelho_url),
            ("XML da nota", links.xml_url),
            ("DANFSe (PDF)", links.danfse_url or ""),
        )
        if url and url.strip()
    ]

    greeting = f"Olá, {tomador_name}," if tomador_name else "Olá,"
    footer = (
        f"Mensagem enviada automaticamente em nome de {issuer}. "
        "Por favor, não responda a este e-mail."
    )

    text_lines = [greeting, "", _INTRO[kind], ""]
    text_lines += [f"{label}: {value}" for label, value in facts]
    if link_rows:
        text_lines.append("")
        text_lines += [f"{label}: {url}" for label, url in link_rows]
    text_lines += ["", footer, ""]

    body = _alternative(
        "\n".join(text_lines), _html(_INTRO[kind], greeting, facts, link_rows, footer)
    )
    when = now if now is not None else datetime.now(UTC)
    msgid = message_id or make_msgid(domain=message_id_domain)
    return _addressed(body, _subject(kind, numero, issuer), sender, recipients, when, msgid)


_NFCE_INTRO: dict[str, str] = {
    "autorizada": "A sua nota fiscal de consumidor eletrônica (NFC-e) foi autorizada pela SEFAZ.",
    "cancelada": "A NFC-e abaixo foi CANCELADA e não tem mais validade fiscal.",
}


def render_nfce_email(
    kind: Literal["autorizada", "cancelada"],
    view: Mapping[str, Any],
    document: Mapping[str, Any],
    issuer_name: str,
    sender: str,
    recipients: Sequence[str],
    message_id_domain: str,
    *,
    danfe: bytes | None = None,
    now: datetime | None = None,
    message_id: str | None = None,
) -> Message:
    """The e-mail about one NFC-e, with its DANFE attached (a consumer has no portal to look
    the note up in: the PDF is the note they keep)."""
    if kind not in _NFCE_INTRO:
        raise ValueError(f"unknown e-mail kind {kind!r}")
    if not recipients:
        raise ValueError("an e-mail needs at least one recipient")
    issuer = _one_line(issuer_name)
    numero = _one_line(view.get("numero") or view.get("ref") or "?")
    cliente: Mapping[str, Any] = document.get("cliente") or {}
    total = sum(
        (Decimal(str(p.get("valor_total_produto", 0))) for p in document.get("produtos") or []),
        Decimal(0),
    )
    facts = [
        (label, value)
        for label, value in (
            ("NFC-e nº", f"{numero} (série {_one_line(view.get('serie') or '?')})"),
            ("Chave de acesso", _one_line(view.get("chave_nfe") or "")),
            ("Protocolo", _one_line(view.get("protocolo") or "")),
            ("Data de emissão", _format_date(view.get("data_emissao"))),
            ("Emitente", " — ".join(
                p for p in (issuer, f"CNPJ {format_cnpj(str(view.get('cnpj_emitente', '')))}") if p
            )),
            ("Valor total", format_brl(total)),
        )
        if value
    ]  # fmt: skip
    name = _one_line(cliente.get("nome") or "")
    greeting = f"Olá, {name}," if name else "Olá,"
    footer = (
        f"Mensagem enviada automaticamente em nome de {issuer}. "
        "Por favor, não responda a este e-mail."
    )
    text = [greeting, "", _NFCE_INTRO[kind], ""] + [f"{label}: {value}" for label, value in facts]
    if danfe:
        text += ["", "O DANFE (PDF) da nota segue em anexo."]
    text += ["", footer, ""]
    verb = "autorizada" if kind == "autorizada" else "cancelada"
    body = _alternative("\n".join(text), _html(_NFCE_INTRO[kind], greeting, facts, [], footer))
    if danfe:  # the note itself, next to the texts: multipart/mixed around the alternative
        body = _multipart("mixed", [body, _pdf(danfe, f"NFCe-{numero}.pdf")])
    when = now if now is not None else datetime.now(UTC)
    msgid = message_id or make_msgid(domain=message_id_domain)
    subject = f"NFC-e nº {numero} {verb} — {issuer}"
    return _addressed(body, subject, sender, recipients, when, msgid)


# The bodies' charset: UTF-8 in quoted-printable, so the message is 7-bit (no server needs
# 8BITMIME) and the Portuguese stays readable in the source. A quoted-printable body has no "="
# of its own (it is written "=3D") and base64 no run of them, so no part can contain a
# boundary: the boundaries need no check against the text.
_BODY_CHARSET = Charset("utf-8")
_BODY_CHARSET.body_encoding = QP
# The headers' encoded-words are base64 ("B"): `email.header` cuts a header into words by
# measuring the encoded text once per character, which in "Q" is a pass over the whole word
# each time and in "B" arithmetic (6 % of the CPU of an e-mail, rendered and flattened).
_HEADER_CHARSET = Charset("utf-8")
_HEADER_CHARSET.header_encoding = BASE64
# A folded line of encoded-words: a space and one word of at most 75 characters (RFC 2047);
# email.header's default (78) makes words of 76.
_WORDS_LINE = 76


def _boundary() -> str:
    """A MIME boundary in the generator's own form (`email.generator._make_boundary`): 15 "=",
    19 random digits, "==". Chosen here, so flattening has none to make nor to check."""
    return f"{'=' * 15}{secrets.randbelow(sys.maxsize):019d}=="


def _multipart(subtype: str, parts: Sequence[Message]) -> Message:
    """What `MIMEMultipart(subtype, boundary=...)` makes, its headers written out: the class
    formats the Content-Type's parameters, then `set_boundary` parses them back to set the
    boundary again (a twentieth of rendering an e-mail)."""
    message = Message()
    # Folded as compat32 folds it (the line is longer than 78), so flattening writes it as is.
    message["Content-Type"] = f'multipart/{subtype};\n boundary="{_boundary()}"'
    message["MIME-Version"] = "1.0"
    for part in parts:
        # email.mime puts MIME-Version on every part; it belongs on the message (RFC 2045).
        del part["MIME-Version"]
        message.attach(part)
    return message


def _alternative(text: str, html_text: str) -> Message:
    """text/plain with its text/html alternative, both UTF-8 quoted-printable."""
    return _multipart("alternative", [_text_part(text, "plain"), _text_part(html_text, "html")])


def _text_part(text: str, subtype: str) -> Message:
    """What `MIMEText(text, subtype, _BODY_CHARSET)` makes, less its MIME-Version: the same
    headers and the body as its encoder writes it (`Charset.body_encode`, through the faster
    `quoted_printable.body_encode`; a property test holds the two equal), without the class's
    round trips (the text encoded, decoded, encoded again, its parameters formatted): a sixth of
    rendering an e-mail. A test holds it to what MIMEText writes."""
    part = Message()
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = "quoted-printable"
    part.set_payload(quoted_printable.body_encode(text))
    return part


def _pdf(content: bytes, filename: str) -> MIMEApplication:
    """A PDF attachment, base64. A non-ASCII name would go as an RFC 2231 parameter."""
    part = MIMEApplication(content, "pdf")
    name: str | tuple[str, str, str] = filename if filename.isascii() else ("utf-8", "", filename)
    part.add_header("Content-Disposition", "attachment", filename=name)
    return part


def _utf8_raw(text: str) -> str:
    """`text`'s UTF-8 bytes as compat32 carries raw bytes in a str (surrogate-escaped): the
    generator writes them as they are (RFC 6532) when sending 8-bit, which an address that is
    not ASCII needs anyway (the server must offer SMTPUTF8 for the envelope)."""
    return text.encode("utf-8").decode("ascii", "surrogateescape")


@functools.lru_cache(maxsize=1024)  # an issuer's name, e-mail after e-mail: ~40 us when not ASCII
def _phrase(name: str) -> str:
    """A display name as a header writes it: quoted when it has specials; when not ASCII, in
    encoded-words of at most 75 characters (RFC 2047; `formataddr` would make one of any
    length), which the generator can fold between."""
    if name.isascii():
        return formataddr((name, "")).removesuffix(" <>")
    # Lines joined by a space: the first word has no space before it to count.
    return Header(name, _HEADER_CHARSET).encode(linesep="", maxlinelen=_WORDS_LINE - 1)


def _mailbox(name: str, address: str) -> str:
    """One `Name <address>` of a From or To."""
    text = f"{_phrase(name)} <{address}>" if name else address
    return text if address.isascii() else _utf8_raw(text)


def _address_list(values: Iterable[str]) -> str:
    """A From or To value for addresses given as text ("Name <addr>", "addr", lists)."""
    mailboxes: list[str] = []
    for value in values:
        line = _one_line(value)
        pairs = [(name, addr) for name, addr in getaddresses([line]) if addr]
        # Text that holds no address is shown as given (the mailer refuses it, as invalid).
        mailboxes += [_mailbox(name, addr) for name, addr in pairs] or [_mailbox("", line)]
    return ", ".join(mailboxes)


@functools.lru_cache(maxsize=256)  # a mailer's From, e-mail after e-mail: ~15 us a parse
def _sender(value: str) -> str:
    """The From value for a sender given as text ("Name <addr>")."""
    return _address_list([value])


def _addressed(
    body: Message,
    subject: str,
    sender: str,
    recipients: Sequence[str],
    when: datetime,
    message_id: str,
) -> Message:
    """`body` as the message: its headers, each stored as it is written (compat32 parses none).
    Every value is on one line (`_one_line`), so none can start a header of its own."""
    # Encoded (and folded) now, like the others: every header is a str, as compat32 keeps them.
    subject_words = Header(_one_line(subject), _HEADER_CHARSET, header_name="Subject")
    body["Subject"] = subject_words.encode(maxlinelen=_WORDS_LINE)
    body["From"] = _sender(sender)
    body["To"] = _address_list(recipients)
    body["Date"] = formatdate(when.timestamp(), localtime=False, usegmt=True)
    body["Message-ID"] = _one_line(message_id)
    body["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    return body


def _link(label: str, url: str) -> str:
    e = html.escape
    if url.lower().startswith(("https://", "http://")):
        return f'<a href="{e(url)}">{e(label)}</a>'
    return f"{e(label)}: {e(url)}"  # never a javascript: or data: href


def _html(
    intro: str,
    greeting: str,
    facts: list[tuple[str, str]],
    link_rows: list[tuple[str, str]],
    footer: str,
) -> str:
    e = html.escape
    rows = "\n".join(
        f'<tr><th style="text-align:left;padding:2px 12px 2px 0">{e(label)}</th>'
        f'<td style="white-space:pre-line">{e(value)}</td></tr>'
        for label, value in facts
    )
    items = "".join(f"<li>{_link(label, url)}</li>\n" for label, url in link_rows)
    return (
        '<!DOCTYPE html>\n<html lang="pt-BR">\n<head><meta charset="utf-8"></head>\n'
        '<body style="font-family:sans-serif">\n'
        f"<p>{e(greeting)}</p>\n<p>{e(intro)}</p>\n"
        f"<table>\n{rows}\n</table>\n"
        + (f"<ul>\n{items}</ul>\n" if items else "")
        + f'<p style="color:#666;font-size:small">{e(footer)}</p>\n</body>\n</html>\n'
    )
