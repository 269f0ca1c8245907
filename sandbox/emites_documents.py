"""An NFC-e the sandbox Emites-Client authorizes: the `sucesso` answer and the documents it
carries, a real DANFE NFC-e (PDF) and an nfeProc-shaped XML, deterministic per input and
without I/O. The decisions before it (validation, SEFAZ's rejections, the access key and
protocol numbers) are `sandbox.emites_rules`'."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from fpdf import FPDF

from notaflow.sandbox.emites_rules import (
    AMBIENTE_HOMOLOGACAO,
    MODELO_NFCE,
    TP_EMIS_NORMAL,
    Emitente,
    access_key,
    codigo_verificacao,
    decimal_value,
    is_foreign,
    payments,
    protocolo,
    total,
    tributacao,
    utc_text,
)


def _money(value: Decimal) -> str:
    return (
        f"{value.quantize(Decimal('0.01')):,.2f}".replace(",", "X")
        .replace(".", ",")
        .replace("X", ".")
    )


def _grouped(key: str) -> str:
    return " ".join(key[i : i + 4] for i in range(0, len(key), 4))


@dataclass(frozen=True)
class Authorized:
    """What a note's documents (DANFE, XML) print: the request and what SEFAZ gave it."""

    doc: Mapping[str, Any]
    emitente: Emitente
    chave: str
    serie: int
    numero: int
    protocol: str
    issued_at: datetime


def render_danfe(note: Authorized) -> bytes:
    """A small but real DANFE NFC-e (80 mm receipt) as PDF bytes, deterministic per input."""
    pdf = FPDF(orientation="P", unit="mm", format=(80, 297))
    pdf.set_creation_date(note.issued_at)
    pdf.set_title(f"DANFE NFC-e {note.numero:09d}")
    pdf.set_margins(4, 4, 4)
    pdf.set_auto_page_break(auto=True, margin=4)
    pdf.add_page()
    width = pdf.epw

    def line(text: str, size: float = 7, style: str = "", align: str = "L") -> None:
        pdf.set_font("helvetica", style=style, size=size)
        pdf.multi_cell(width, size * 0.5, text, align=align, new_x="LMARGIN", new_y="NEXT")

    line(note.emitente.razao_social, 8, "B", "C")
    line(f"CNPJ: {note.emitente.cnpj}", align="C")
    line("DANFE NFC-e - Documento Auxiliar da Nota Fiscal de Consumidor Eletrônica", 7, "B", "C")
    line("EMITIDA EM AMBIENTE DE HOMOLOGAÇÃO - SEM VALOR FISCAL", 6, "B", "C")
    pdf.ln(1)
    line("Código | Descrição | Qtde | Un | Vl Unit | Vl Total", 6, "B")
    for produto in note.doc.get("produtos", ()):
        line(
            f"{produto.get('codigo_produto')} {produto.get('descricao')} "
            f"{produto.get('quantidade_comercial')} {produto.get('unidade_comercial')} x "
            f"{_money(decimal_value(produto.get('valor_unitario_comercial')))} = "
            f"{_money(decimal_value(produto.get('valor_total_produto')))}",
            6,
        )
    pdf.ln(1)
    line(f"Qtde. total de itens: {len(note.doc.get('produtos', ()))}")
    line(f"VALOR TOTAL R$ {_money(total(note.doc))}", 8, "B")
    for payment in payments(note.doc):
        amount = _money(decimal_value(payment.get("valor_do_pagamento")))
        line(f"Forma de pagamento {payment.get('tipo_de_pagamento')}: R$ {amount}")
    pdf.ln(1)
    line(
        f"NFC-e nº {note.numero:09d} Série {note.serie:03d} {utc_text(note.issued_at)}", 7, "B", "C"
    )
    line("Consulte pela Chave de Acesso:", align="C")
    line(_grouped(note.chave), 7, "", "C")
    line(f"Protocolo de autorização: {note.protocol}", align="C")
    cliente = note.doc.get("cliente")
    if is_foreign(cliente):
        line(
            f"CONSUMIDOR ID ESTRANGEIRO: {cliente.get('cpf_cnpj')} {cliente.get('nome')}", align="C"
        )
    elif isinstance(cliente, dict):
        line(f"CONSUMIDOR: {cliente.get('cpf_cnpj')} {cliente.get('nome')}", align="C")
    else:
        line("CONSUMIDOR NÃO IDENTIFICADO", align="C")
    return bytes(pdf.output())


_ENDER_DEST: Final = (
    ("xLgr", "logradouro"),
    ("nro", "numero"),
    ("xBairro", "bairro"),
    ("cMun", "codigo_municipio"),
    ("xMun", "nome_municipio"),
    ("UF", "uf"),
    ("cPais", "codigo_pais"),
    ("xPais", "nome_pais"),
)


def _sub(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    element = ET.SubElement(parent, tag)
    if text is not None:
        element.text = str(text)
    return element


def render_xml(note: Authorized) -> bytes:
    """An nfeProc-shaped XML (unsigned: the sandbox has no certificate)."""
    root = ET.Element("nfeProc", {"xmlns": "http://www.portalfiscal.inf.br/nfe", "versao": "4.00"})
    inf = _sub(_sub(root, "NFe"), "infNFe")
    inf.set("Id", f"NFe{note.chave}")
    inf.set("versao", "4.00")
    ide = _sub(inf, "ide")
    for tag, value in (
        ("cUF", note.emitente.uf_code),
        ("cNF", note.chave[35:43]),
        ("natOp", note.doc.get("natureza_operacao")),
        ("mod", MODELO_NFCE),
        ("serie", note.serie),
        ("nNF", note.numero),
        ("dhEmi", utc_text(note.issued_at)),
        ("tpNF", note.doc.get("tipo_operacao", 1)),
        ("idDest", note.doc.get("destino_operacao", 1)),
        ("tpImp", note.doc.get("tipo_impressao", 4)),
        ("tpEmis", TP_EMIS_NORMAL),
        ("cDV", note.chave[43]),
        ("tpAmb", AMBIENTE_HOMOLOGACAO),
        ("finNFe", note.doc.get("finalidade_nfe", 1)),
        ("indFinal", note.doc.get("indicador_consumidor_final", 1)),
        ("indPres", note.doc.get("indicador_presenca")),
    ):
        _sub(ide, tag, value)
    emit = _sub(inf, "emit")
    _sub(emit, "CNPJ", note.emitente.cnpj)
    _sub(emit, "xNome", note.emitente.razao_social)
    cliente = note.doc.get("cliente")
    if isinstance(cliente, dict):
        dest = _sub(inf, "dest")
        number = str(cliente.get("cpf_cnpj"))
        tag = "idEstrangeiro" if is_foreign(cliente) else "CPF" if len(number) == 11 else "CNPJ"
        _sub(dest, tag, number)
        _sub(dest, "xNome", cliente.get("nome"))
        endereco = cliente.get("endereco")
        if isinstance(endereco, dict):
            ender = _sub(dest, "enderDest")
            for tag, name in _ENDER_DEST:
                if endereco.get(name) is not None:
                    _sub(ender, tag, endereco[name])
    for index, produto in enumerate(note.doc.get("produtos", ()), start=1):
        det = _sub(inf, "det")
        det.set("nItem", str(index))
        prod = _sub(det, "prod")
        _sub(prod, "cProd", produto.get("codigo_produto"))
        _sub(prod, "cEAN", produto.get("codigo_ean") or "SEM GTIN")
        _sub(prod, "xProd", produto.get("descricao"))
        _sub(prod, "NCM", produto.get("ncm"))
        _sub(prod, "CFOP", produto.get("cfop") or "5102")
        _sub(prod, "uCom", produto.get("unidade_comercial"))
        _sub(prod, "qCom", produto.get("quantidade_comercial"))
        _sub(prod, "vUnCom", produto.get("valor_unitario_comercial"))
        _sub(prod, "vProd", produto.get("valor_total_produto"))
    _sub(_sub(_sub(inf, "total"), "ICMSTot"), "vNF", f"{total(note.doc):.2f}")
    info = _sub(_sub(root, "protNFe"), "infProt")
    _sub(info, "tpAmb", AMBIENTE_HOMOLOGACAO)
    _sub(info, "chNFe", note.chave)
    _sub(info, "dhRecbto", utc_text(note.issued_at))
    _sub(info, "nProt", note.protocol)
    _sub(info, "cStat", "100")
    _sub(info, "xMotivo", "Autorizado o uso da NF-e")
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def authorize(
    doc: Mapping[str, Any],
    *,
    emitente: Emitente,
    id_: int,
    serie: int,
    numero: int,
    protocol_sequence: int,
    issued_at: datetime,
    public_url: str,
) -> dict[str, Any]:
    """The `sucesso` answer: the request echoed plus what Emites and SEFAZ add."""
    chave = access_key(emitente, issued_at, serie, numero)
    protocol = protocolo(emitente, issued_at, protocol_sequence)
    answer = dict(doc)
    answer["produtos"] = [
        {**produto, "tributacao": tributacao(produto)} for produto in doc.get("produtos", ())
    ]
    note = Authorized(doc, emitente, chave, serie, numero, protocol, issued_at)
    danfe, xml = render_danfe(note), render_xml(note)
    answer.update(
        {
            "status": "sucesso",
            "id": id_,
            "nfe_numero": numero,
            "serie": serie,
            "danfe_url": f"{public_url}/nfce/{chave}/danfe.pdf",
            "xml_url": f"{public_url}/nfce/{chave}.xml",
            "danfe": base64.b64encode(danfe).decode("ascii"),
            "xml": base64.b64encode(xml).decode("ascii"),
            "resposta_emissao": {
                "chave_acesso": chave,
                "codigo_verificacao": codigo_verificacao(chave),
                "data_emissao": utc_text(issued_at),
                "numero_protocolo": protocol,
            },
        }
    )
    return answer
