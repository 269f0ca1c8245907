"""How the sandbox "Ambiente Nacional" decides an NFS-e Nacional, deterministically, without I/O.

The shell is `sandbox.focus` (`kinds.NACIONAL`). The flat DPS document (Focus `/v2/nfsen`) is
judged by:

    E0312  `valor_servico` absent, not a number, or <= 0.
    E0314  `codigo_tributacao_nacional_iss` is not a national service code: 6 digits whose
           first four are an LC 116/2003 item (group 01..40, subitem not 00).
    E0330  `valor_pis` or `valor_cofins` without `base_calculo_pis_cofins`.
    E999   `[sandbox:erro]` in `descricao_servico`.

The scenario markers of `sandbox.focus_rules` work in `descricao_servico` (delay, http500,
sem_callback, nao_cancela, erro), so the failure paths are the municipal note's.

An authorized note gets the 50-digit chave de acesso of the national NFS-e as its
`codigo_verificacao`, with the layout's structure: municipality of issue (7, IBGE), ambiente
gerador (1: 2 = Sefin Nacional), type of the prestador's document (1: 1 CPF, 2 CNPJ), the
document (14, a CPF left-padded with zeros), the NFS-e number (13), year and month of issue
(AAMM, 4), a code (9, derived from the prestador and number) and a check digit (1, modulo 11
over the 49 before it, weights 2..9 from the right; 10 and 11 become 0).
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notaflow.sandbox import focus_rules as rules

NS = "http://www.sped.fazenda.gov.br/nfse"
AMBIENTE_GERADOR = "2"
XML_DIR = "/notas_fiscais_servico_nacional"

E0312 = rules.erro("E0312", "Valor do serviço deve ser maior que zero.")
E0314 = rules.erro(
    "E0314", "Código de tributação nacional inexistente (6 dígitos do item da LC 116/2003)."
)
E0330 = rules.erro("E0330", "PIS/COFINS informado sem a base de cálculo.")

_CODIGO_NACIONAL = re.compile(r"(\d{2})(\d{2})(\d{2})")


def prestador(doc: dict[str, Any]) -> tuple[str, str]:
    """(document type for the chave: "2" CNPJ or "1" CPF, the document's digits)."""
    cnpj = rules.digits(doc.get("cnpj_prestador"))
    if cnpj:
        return "2", cnpj
    return "1", rules.digits(doc.get("cpf_prestador"))


def as_municipal(doc: dict[str, Any]) -> dict[str, Any]:
    """Just enough of the municipal shape for `focus_rules.plan` to read the markers."""
    return {"servico": {"discriminacao": str(doc.get("descricao_servico") or "")}}


def decide(doc: dict[str, Any], scenario: rules.Scenario | None = None) -> rules.Decision:
    if scenario is not None and scenario.status == "autorizado":
        return rules.Decision()
    if scenario is not None and scenario.status == "erro_autorizacao":
        return rules.Decision(erros=scenario.erros)
    erros: list[rules.Erro] = []
    valor = rules._decimal(doc.get("valor_servico"))
    if valor is None or valor <= 0:
        erros.append(E0312)
    if not is_codigo_nacional(doc.get("codigo_tributacao_nacional_iss")):
        erros.append(E0314)
    if rules._decimal(doc.get("base_calculo_pis_cofins")) is None and any(
        rules._decimal(doc.get(name)) is not None for name in ("valor_pis", "valor_cofins")
    ):
        erros.append(E0330)
    if rules.parse_markers(str(doc.get("descricao_servico") or "")).erro:
        erros.append(rules.E999)
    return rules.Decision(erros=tuple(erros))


def is_codigo_nacional(value: object) -> bool:
    match = _CODIGO_NACIONAL.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return False
    return rules.is_item_lc116(match.group(1) + match.group(2))


def check_digit(digits: str) -> str:
    total, weight = 0, 2
    for char in reversed(digits):
        total += int(char) * weight
        weight = 2 if weight == 9 else weight + 1
    rest = total % 11
    return "0" if rest < 2 else str(11 - rest)


def chave_acesso(
    *, municipio: str, tipo_documento: str, documento: str, numero: int, issued: datetime
) -> str:
    code = int(hashlib.sha256(f"{documento}:{numero}".encode()).hexdigest(), 16) % 10**9
    body = (
        f"{municipio:0>7}"[:7]
        + AMBIENTE_GERADOR
        + tipo_documento
        + f"{documento:0>14}"[:14]
        + f"{numero:013d}"
        + issued.strftime("%y%m")
        + f"{code:09d}"
    )
    return body + check_digit(body)


def valid_chave(chave: str) -> bool:
    return len(chave) == 50 and chave.isdigit() and check_digit(chave[:49]) == chave[49]


@dataclass(frozen=True)
class NfsenAutorizada(rules.NotaAutorizada):
    """An authorized national note: Focus answers its chave de acesso as `codigo_verificacao`
    (both fields hold it), and the GET fields and XML name are the municipal note's."""

    chave: str

    @property
    def caminho_xml_cancelamento(self) -> str:
        return f"{XML_DIR}/{self.xml_name}{rules.CANCEL_SUFFIX}.xml"


def authorize(
    doc: dict[str, Any], *, numero: int, authorized_at: datetime, base_url: str, secret: str
) -> NfsenAutorizada:
    """The national fields of an authorized note; `secret` makes the XML's path unguessable."""
    tipo, documento = prestador(doc)
    local = authorized_at.astimezone(rules.BRASILIA)
    chave = chave_acesso(
        municipio=rules.digits(doc.get("codigo_municipio_emissora")),
        tipo_documento=tipo,
        documento=documento,
        numero=numero,
        issued=local,
    )
    base = base_url.rstrip("/")
    return NfsenAutorizada(
        numero=numero,
        chave=chave,
        codigo_verificacao=chave,
        data_emissao=rules.data_emissao(authorized_at),
        url=f"{base}/ConsultaPublica/?tpc=1&chave={chave}",
        url_danfse=f"{base}/nfsen/{chave}/danfse.pdf",
        caminho_xml_nota_fiscal=f"{XML_DIR}/NFSe{chave}-{secret}.xml",
    )


# Fields of the DPS echoed in the XML (tag, document field), as received.
XML_FIELDS = (
    ("dCompet", "data_competencia"),
    ("cLocPrestacao", "codigo_municipio_prestacao"),
    ("cTribNac", "codigo_tributacao_nacional_iss"),
    ("cNBS", "codigo_nbs"),
    ("xDescServ", "descricao_servico"),
    ("vServ", "valor_servico"),
    ("tribISSQN", "tributacao_iss"),
    ("tpRetISSQN", "tipo_retencao_iss"),
    ("CSTPisCofins", "situacao_tributaria_pis_cofins"),
    ("vBCPisCofins", "base_calculo_pis_cofins"),
    ("pAliqPis", "aliquota_pis"),
    ("pAliqCofins", "aliquota_cofins"),
    ("vPis", "valor_pis"),
    ("vCofins", "valor_cofins"),
    ("tomadorCNPJ", "cnpj_tomador"),
    ("tomadorCPF", "cpf_tomador"),
    ("tomadorNome", "razao_social_tomador"),
)


def nfsen_xml(doc: dict[str, Any], nota: NfsenAutorizada, *, numero_dps: int) -> bytes:
    root = ET.Element("NFSe", xmlns=NS, versao="1.00")
    inf = ET.SubElement(root, "infNFSe", Id=f"NFS{nota.chave}")
    tipo, documento = prestador(doc)
    fields = {
        "nNFSe": str(nota.numero),
        "chNFSe": nota.chave,
        "dhProc": nota.data_emissao,
        "cLocEmi": rules.digits(doc.get("codigo_municipio_emissora")),
        "CNPJ" if tipo == "2" else "CPF": documento,
        "nDPS": str(numero_dps),
    }
    for tag, name in XML_FIELDS:
        value = doc.get(name)
        if value is not None and value is not False and value != "":
            fields[tag] = str(value)
    for tag, text in fields.items():
        ET.SubElement(inf, tag).text = text
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def cancelamento_xml(nota: NfsenAutorizada, *, cancelled_at: datetime, motivo: str) -> bytes:
    """The national cancellation event (e101101), reduced to what a client reads."""
    root = ET.Element("evento", xmlns=NS, versao="1.00")
    inf = ET.SubElement(root, "infEvento", Id=f"EVT{nota.chave}101101")
    fields = {
        "chNFSe": nota.chave,
        "nNFSe": str(nota.numero),
        "dhEvento": rules.data_emissao(cancelled_at),
        "tpEvento": "101101",
        "xDesc": "Cancelamento de NFS-e",
        "cMotivo": "1",
        "xMotivo": motivo,
    }
    for tag, text in fields.items():
        ET.SubElement(inf, tag).text = text
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def danfse_lines(doc: dict[str, Any], nota: NfsenAutorizada, cancelled: bool) -> list[str]:
    return [
        f"DANFSe - NFS-e Nacional {nota.numero} - {'CANCELADA' if cancelled else 'ATIVA'}",
        f"Chave de acesso: {nota.chave}",
        f"Emissao: {nota.data_emissao}",
        f"Prestador: {prestador(doc)[1]}",
        f"Servico {doc.get('codigo_tributacao_nacional_iss', '')}: "
        f"{doc.get('descricao_servico', '')}",
        f"Valor do servico: {doc.get('valor_servico', '')}",
        f"Consulte em {nota.url}",
    ]
