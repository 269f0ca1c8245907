"""The invoice (fatura) as a PDF a customer can file and pay: issuer, customer, number, dates,
lines, total and the payment line (linha digitável). Pure: invoice fields in, bytes out.

Helvetica (a PDF core font) covers Latin-1, which is all Portuguese needs; other characters are
replaced rather than failing the e-mail.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fpdf import FPDF

from notaflow.billing import br_date, format_brl, format_document

STATE_LABELS = {
    "draft": "RASCUNHO",
    "waiting": "EM ABERTO",
    "notpaid": "EM ABERTO",
    "late": "VENCIDA",
    "paid": "PAGA",
    "inactive": "CANCELADA",
}


def _latin1(value: Any) -> str:
    return str(value if value is not None else "").encode("latin-1", "replace").decode("latin-1")


def render_invoice_pdf(invoice: Mapping[str, Any], issuer: Mapping[str, Any]) -> bytes:
    """`invoice`: the normalized fields (notaflow.billing); `issuer`: nome, cnpj, endereco,
    email of the company that bills."""
    customer = invoice.get("customer") or {}
    number = invoice.get("number") or invoice.get("uid")
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_title(_latin1(f"Fatura {number}"))
    pdf.set_author(_latin1(issuer.get("nome") or "notaflow"))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def text(value: Any, size: float = 10, style: str = "", h: float = 5.5) -> None:
        pdf.set_font("Helvetica", style, size)
        pdf.multi_cell(width, h, _latin1(value), new_x="LMARGIN", new_y="NEXT")

    text(issuer.get("nome") or "", 16, "B", 8)
    if issuer.get("cnpj"):
        text(f"CNPJ {format_document(str(issuer['cnpj']))}")
    if issuer.get("endereco"):
        text(issuer["endereco"])
    if issuer.get("email"):
        text(issuer["email"])
    pdf.ln(4)
    text(f"FATURA Nº {number}", 14, "B", 7)
    state = STATE_LABELS.get(str(invoice.get("state")), "")
    rows = [
        ("Emissão", br_date(invoice.get("data_emissao")) or "-"),
        ("Vencimento", br_date(invoice.get("data_vencimento"))),
        ("Situação", state),
    ]
    if invoice.get("data_pagamento"):
        rows.append(("Pagamento", br_date(invoice.get("data_pagamento"))))
    if invoice.get("nosso_numero"):
        rows.append(("Nosso número", invoice.get("nosso_numero_dv") or invoice["nosso_numero"]))
    if invoice.get("tipo_cobranca"):
        rows.append(("Forma de cobrança", str(invoice["tipo_cobranca"]).replace("_", " ")))
    for label, value in rows:
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(45, 6, _latin1(label + ":"))
        pdf.set_font("Helvetica", "", 10)
        pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(3)
    text("CLIENTE", 11, "B", 6)
    text(customer.get("nome") or customer.get("contato") or "-")
    if customer.get("cpf_cnpj"):
        doc = str(customer["cpf_cnpj"])
        text(f"{'CPF' if len(doc) == 11 else 'CNPJ'} {format_document(doc)}")
    if customer.get("codigo_cliente"):
        text(f"Código do cliente: {customer['codigo_cliente']}")
    if customer.get("endereco"):
        text(customer["endereco"])
    if customer.get("email"):
        text(customer["email"])
    pdf.ln(3)
    _lines(pdf, invoice, width)
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, _latin1(f"TOTAL A PAGAR: {format_brl(invoice.get('valor', 0))}"), align="R",
             new_x="LMARGIN", new_y="NEXT")  # fmt: skip
    pdf.ln(4)
    if invoice.get("linha_digitavel"):
        text("Linha digitável", 11, "B", 6)
        pdf.set_font("Courier", "B", 11)
        pdf.multi_cell(width, 6, _latin1(invoice["linha_digitavel"]), border=1,
                       new_x="LMARGIN", new_y="NEXT")  # fmt: skip
    out = pdf.output()
    return bytes(out)


def _lines(pdf: FPDF, invoice: Mapping[str, Any], width: float) -> None:
    lines = list(invoice.get("lines") or [])
    if not lines:
        det = invoice.get("detalhamento") or {}
        lines = [
            {
                "descricao": det.get("descricao") or "Serviços",
                "quantidade": "1",
                "total": invoice.get("valor", 0),
            }
        ]
    cols = (width - 75, 20, 27.5, 27.5)
    pdf.set_font("Helvetica", "B", 10)
    pdf.set_fill_color(230, 230, 230)
    for label, w, align in zip(
        ("Descrição", "Qtd.", "Unitário", "Total"), cols, ("L", "R", "R", "R"), strict=True
    ):
        pdf.cell(w, 7, _latin1(label), border=1, align=align, fill=True)
    pdf.ln()
    pdf.set_font("Helvetica", "", 9)
    for line in lines:
        qty = str(line.get("quantidade", "1")).rstrip("0").rstrip(".") or "0"
        unit = line.get("valor_unitario")
        total = line.get("total", unit if unit is not None else 0)
        cells = (
            str(line.get("descricao", "")),
            qty,
            format_brl(unit) if unit is not None else "",
            format_brl(total),
        )
        for value, w, align in zip(cells, cols, ("L", "R", "R", "R"), strict=True):
            pdf.cell(w, 6, _latin1(value)[:90], border=1, align=align)
        pdf.ln()
