"""Invoice e-mails: the default templates per action, the [variables] a template may use,
and the rendering (HTML escaped, with a plain-text part)."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from notaflow.billing.formatting import br_date, format_brl, format_document

ACTIONS = ("send_invoice", "dunning_invoice")


@dataclass(frozen=True)
class Template:
    subject: str
    content: str  # HTML with [variables]


DEFAULT_TEMPLATES: dict[str, Template] = {
    "send_invoice": Template(
        subject="Fatura [facture-numero] - [entreprise-nom]",
        content=(
            "<p>Olá [contact-nom],</p>"
            "<p>Segue a fatura <strong>[facture-numero]</strong> emitida em [facture-date], "
            "no valor de <strong>[facture-montant]</strong>, com vencimento em "
            "[facture-echeance].</p>"
            "<p>Linha digitável: [linha-digitavel]</p>"
            '<p><a href="[lien-html]">Ver a fatura</a> · '
            '<a href="[lien-pdf]">Baixar o PDF</a></p>'
            "<p>Atenciosamente,<br>[entreprise-nom]</p>"
        ),
    ),
    "dunning_invoice": Template(
        subject="Lembrete: fatura [facture-numero] vencida em [facture-echeance]",
        content=(
            "<p>Olá [contact-nom],</p>"
            "<p>Não identificamos o pagamento da fatura <strong>[facture-numero]</strong>, "
            "no valor de <strong>[facture-montant]</strong>, vencida em [facture-echeance].</p>"
            "<p>Linha digitável: [linha-digitavel]</p>"
            '<p><a href="[lien-html]">Ver a fatura</a> · '
            '<a href="[lien-pdf]">Baixar o PDF</a></p>'
            "<p>Se o pagamento já foi feito, desconsidere esta mensagem.</p>"
            "<p>Atenciosamente,<br>[entreprise-nom]</p>"
        ),
    ),
}

_VARIABLE = re.compile(r"\[([a-z][a-z0-9-]*)\]")
_TAG = re.compile(r"<[^>]+>")
_BLOCK_END = re.compile(r"(?i)<br\s*/?>|</p>|</div>|</li>|</h[1-6]>")


def template_variables(
    invoice: Mapping[str, Any], issuer_name: str, html_url: str, pdf_url: str
) -> dict[str, str]:
    customer = invoice.get("customer") or {}
    return {
        "lien-html": html_url,
        "lien-pdf": pdf_url,
        "facture-numero": str(invoice.get("number") or invoice.get("uid") or ""),
        "facture-date": br_date(invoice.get("data_emissao")),
        "facture-echeance": br_date(invoice.get("data_vencimento")),
        "facture-montant": format_brl(invoice.get("valor", 0)),
        "facture-paiement": br_date(invoice.get("data_pagamento")),
        "contact-nom": str(customer.get("contato") or customer.get("nome") or "cliente"),
        "client-nom": str(customer.get("nome") or ""),
        "client-email": str(customer.get("email") or ""),
        "client-documento": format_document(str(customer.get("cpf_cnpj") or "")),
        "linha-digitavel": str(invoice.get("linha_digitavel") or "não se aplica"),
        "nosso-numero": str(invoice.get("nosso_numero") or ""),
        "entreprise-nom": issuer_name,
    }


def render_template(text: str, variables: Mapping[str, str], escape: bool) -> str:
    """Replace every known [variable]; unknown ones stay as written."""

    def sub(m: re.Match[str]) -> str:
        value = variables.get(m.group(1))
        if value is None:
            return m.group(0)
        return html.escape(value) if escape else value

    return _VARIABLE.sub(sub, text)


def html_to_text(content: str) -> str:
    text = _BLOCK_END.sub("\n", content)
    text = html.unescape(_TAG.sub("", text))
    return "\n".join(line.strip() for line in text.splitlines()).strip() + "\n"


@dataclass(frozen=True)
class RenderedMail:
    subject: str
    html: str
    text: str


def render_mail(
    template: Template,
    variables: Mapping[str, str],
    subject: str | None = None,
    content: str | None = None,
) -> RenderedMail:
    """The e-mail for a Wuro request: its own subject/content when given (variables still
    replaced; plain text content becomes paragraphs), otherwise the tenant's template."""
    body = content if content else template.content
    if content and "<" not in content:
        body = "".join(f"<p>{html.escape(p)}</p>" for p in content.split("\n\n") if p.strip())
        body = body.replace("\n", "<br>")
    rendered_html = render_template(body, variables, escape=True)
    rendered_subject = render_template(subject or template.subject, variables, escape=False)
    return RenderedMail(
        subject=" ".join(rendered_subject.split()),
        html=rendered_html,
        text=html_to_text(rendered_html),
    )
