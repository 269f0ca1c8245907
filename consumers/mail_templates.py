"""The notification e-mails about an NFS-e, in Portuguese: pure functions, no I/O.

`render_nfse_email` builds a complete MIME message (text/plain with a text/html alternative,
UTF-8) that tells the reader which note it is about (número, código de verificação, prestador,
tomador, valor) and where to get it. Only Message-ID and Date depend on the clock, and tests
can pass both.
"""

from __future__ import annotations

import html
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import default
from email.utils import formatdate, make_msgid
from typing import Any, Literal

from notaflow.brdocs import clean_document

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


class _CachedHeaderRegistry(HeaderRegistry):
    """The standard library's header registry, but each header's class made once: the stock
    one builds a new class (`type(...)`) for every header it parses, which was a third of the
    CPU of rendering an e-mail (a notification consumer renders one per note). The classes,
    and so the headers and the message bytes, are the same."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


# `email.policy.default` (what EmailMessage() takes) with the cached registry.
POLICY = default.clone(header_factory=_CachedHeaderRegistry())


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
) -> EmailMessage:
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

    msg = EmailMessage(policy=POLICY)
    msg["Subject"] = _subject(kind, numero, issuer)
    msg["From"] = _one_line(sender)
    msg["To"] = ", ".join(_one_line(r) for r in recipients)
    when = now if now is not None else datetime.now(UTC)
    msg["Date"] = formatdate(when.timestamp(), localtime=False, usegmt=True)
    msg["Message-ID"] = message_id or make_msgid(domain=message_id_domain)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
    msg.set_content("\n".join(text_lines), charset="utf-8")
    msg.add_alternative(_html(_INTRO[kind], greeting, facts, link_rows, footer), subtype="html")
    return _with_boundaries(msg)


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
) -> EmailMessage:
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
    msg = EmailMessage(policy=POLICY)
    verb = "autorizada" if kind == "autorizada" else "cancelada"
    msg["Subject"] = f"NFC-e nº {numero} {verb} — {issuer}"
    msg["From"] = _one_line(sender)
    msg["To"] = ", ".join(_one_line(r) for r in recipients)
    when = now if now is not None else datetime.now(UTC)
    msg["Date"] = formatdate(when.timestamp(), localtime=False, usegmt=True)
    msg["Message-ID"] = message_id or make_msgid(domain=message_id_domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("\n".join(text), charset="utf-8")
    msg.add_alternative(_html(_NFCE_INTRO[kind], greeting, facts, [], footer), subtype="html")
    if danfe:
        msg.add_attachment(
            danfe, maintype="application", subtype="pdf", filename=f"NFCe-{numero}.pdf"
        )
    return _with_boundaries(msg)


def _with_boundaries(msg: EmailMessage) -> EmailMessage:
    """Give every multipart its boundary now, through this policy's cached header classes.
    Left to the generator, the boundary is set while the message is flattened, under the
    sender's policy (aiosmtplib's `email.policy.SMTP`), whose registry builds a new
    Content-Type class per message: a class and its reference cycles per e-mail for the
    collector. The generator's form: 19 random digits, which our texts do not hold."""
    for part in msg.walk():
        if part.is_multipart() and part.get_boundary() is None:
            token = secrets.randbelow(sys.maxsize)
            part.set_param("boundary", f"{'=' * 15}{token:019d}==", replace=True)
    return msg


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
