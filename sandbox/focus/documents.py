"""The documents the sandbox renders for a municipal note (small, just enough for a client to
fetch and parse): its ABRASF-like XML, the HTML espelho, and a one-page DANFSe PDF (also used
for national notes). The national XML is `sandbox.focus_nacional_rules`'."""

from __future__ import annotations

import html
import xml.etree.ElementTree as ET

from notaflow.sandbox import focus_rules as rules
from notaflow.sandbox.focus.dialect import dig
from notaflow.sandbox.focus.notes import Nota


def nfse_xml(nota: Nota[rules.NotaAutorizada]) -> bytes:
    autorizada = nota.autorizada
    assert autorizada is not None, "only authorized notes have an XML"
    root = ET.Element("CompNfse", xmlns="http://www.abrasf.org.br/nfse.xsd")
    inf = ET.SubElement(ET.SubElement(root, "Nfse"), "InfNfse")
    servico = rules.section(nota.doc, "servico")
    fields = {
        "Numero": str(autorizada.numero),
        "CodigoVerificacao": autorizada.codigo_verificacao,
        "DataEmissao": autorizada.data_emissao,
        "NumeroRps": str(nota.numero_rps),
        "SerieRps": rules.SERIE_RPS,
        "TipoRps": rules.TIPO_RPS,
        "CnpjPrestador": nota.cnpj,
        "CodigoMunicipio": rules.digits(dig(nota.doc, "prestador", "codigo_municipio")),
        "ItemListaServico": str(servico.get("item_lista_servico", "")),
        "ValorServicos": str(servico.get("valor_servicos", "")),
        "Discriminacao": str(servico.get("discriminacao", "")),
    }
    fields.update(rules.xml_extras(nota.doc))  # the 2026 fields (IBS/CBS, nif), as received
    for tag, text in fields.items():
        ET.SubElement(inf, tag).text = text
    if nota.status == "cancelado":
        ET.SubElement(root, "NfseCancelamento").text = "true"
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def espelho_lines(nota: Nota[rules.NotaAutorizada]) -> list[str]:
    autorizada = nota.autorizada
    assert autorizada is not None, "only authorized notes have an espelho"
    servico = rules.section(nota.doc, "servico")
    return [
        f"NFS-e {autorizada.numero} - {'CANCELADA' if nota.status == 'cancelado' else 'ATIVA'}",
        f"Codigo de verificacao: {autorizada.codigo_verificacao}",
        f"Emissao: {autorizada.data_emissao}",
        f"Prestador CNPJ: {nota.cnpj}",
        f"RPS: {nota.numero_rps} serie {rules.SERIE_RPS}",
        f"Servico {servico.get('item_lista_servico', '')}: {servico.get('discriminacao', '')}",
        f"Valor dos servicos: {servico.get('valor_servicos', '')}",
    ]


def espelho_html(nota: Nota[rules.NotaAutorizada]) -> str:
    lines = espelho_lines(nota)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines[1:])
    return (
        "<!doctype html><html lang='pt-BR'><head><meta charset='utf-8'>"
        f"<title>{html.escape(lines[0])}</title></head>"
        f"<body><h1>{html.escape(lines[0])}</h1><ul>{items}</ul>"
        "<p>Espelho gerado pelo sandbox Focus do notaflow.</p></body></html>"
    )


def danfse_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with the lines in Helvetica; offsets computed so readers accept it."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    text_ops = "".join(f"({escape(line)}) Tj T* " for line in lines)
    stream = f"BT /F1 11 Tf 14 TL 50 790 Td {text_ops}ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, obj)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
