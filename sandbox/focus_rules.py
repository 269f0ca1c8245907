"""How the sandbox "prefeitura" decides an NFS-e, deterministically and without I/O.

The Focus sandbox (`sandbox.focus`) is an async shell around these functions: it keeps the
state (counters, notes, hooks) and calls in here for every decision, so each rule is tested
exhaustively without a server.

Authorization rules (`decide`), all checked; every broken rule adds one error
`{"codigo", "mensagem", "correcao": None}` and any error means `erro_autorizacao`:

    E145  `prestador.codigo_municipio` in `REGIME_OBRIGATORIO` (5300108 Brasília,
          3550308 São Paulo) and `regime_especial_tributacao` absent or not one of 1..6.
    E160  `servico.aliquota` above `ALIQUOTA_MAXIMA` (5 %) or not a number. An absent
          aliquota is accepted: many municipalities compute it themselves.
    E170  `servico.valor_servicos` absent, not a number, or <= 0.
    E180  `servico.item_lista_servico` does not look like an LC 116/2003 item: 4 digits with
          an optional dot after the second ("0107", "01.07", "1412", "14.12"), group 01..40,
          subitem not 00.
    E310  the IBS/CBS group (Reforma Tributária) is inconsistent: a value (`ibs_uf_valor`,
          `ibs_mun_valor`, `cbs_valor`) without its rate (`ibs_uf_aliquota`, ...), or a rate
          without `ibs_cbs_base_calculo`.
    E311  an IBS/CBS value that is not base x rate / 100 (to the cent, one cent of tolerance).
    E312  IBS/CBS values or rates without `ibs_cbs_classificacao_tributaria` (cClassTrib).
    E999  `[sandbox:erro]` in `servico.discriminacao` (a test asks for a rejection).

"No value" markers (null, false, "") are absent, as at Focus; the 2026 fields are echoed in
the XML (`xml_extras`).

Numbers may arrive as strings ("1.00", "2.92"): the seed's own examples send them that way.

Scenario markers in `servico.discriminacao` let an end-to-end test ask for an outcome through
the whole system, where only the document travels:

    [sandbox:erro]            rejected with E999
    [sandbox:delay=SECONDS]   processing takes SECONDS instead of the configured delay
    [sandbox:sem_callback]    no hook is called for this note (a lost callback)
    [sandbox:http500=N]       the first N POSTs of this ref answer 500 and are not accepted
    [sandbox:nao_cancela]     DELETE answers erro_cancelamento E523

A `Scenario` (posted to `/_sandbox/scenario` for a ref) does the same from outside the document
and wins over the markers; its `status` forces the outcome regardless of the rules.

Authorized fields (`authorize`): `numero` is sequential per prestador CNPJ (the shell owns the
counter and passes the next one); `codigo_verificacao` is derived from sha256(cnpj, numero) and
looks like "AB12-CD3"; `data_emissao` is the authorization instant in -03:00;
`url` is the sandbox espelho `/nfse/{cnpj}/{numero}`, `url_danfse` its PDF, and
`caminho_xml_nota_fiscal` is `/notas_fiscais_servico/NFSe{cnpj}{municipio}-{numero:09}-{code}.xml`
with `code` the verification code without its dash.
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypedDict

REGIME_OBRIGATORIO: frozenset[str] = frozenset({"5300108", "3550308"})
REGIMES_VALIDOS: frozenset[str] = frozenset({"1", "2", "3", "4", "5", "6"})
ALIQUOTA_MAXIMA = Decimal("5")
SERIE_RPS = "1"
TIPO_RPS = "1"
BRASILIA = timezone(timedelta(hours=-3))

_ITEM_LC116 = re.compile(r"(\d{2})\.?(\d{2})")
_LC116_GRUPOS = range(1, 41)
_MARKER = re.compile(r"\[sandbox:([a-z_0-9]+)(?:=([^\]]*))?\]")


class Erro(TypedDict):
    codigo: str
    mensagem: str
    correcao: str | None


def erro(codigo: str, mensagem: str) -> Erro:
    return {"codigo": codigo, "mensagem": mensagem, "correcao": None}


E145 = erro("E145", "Regime Especial de Tributação ausente/inválido.")
E160 = erro("E160", "Alíquota do ISS inválida: deve ser um número de no máximo 5%.")
E170 = erro("E170", "Valor dos serviços deve ser maior que zero.")
E180 = erro("E180", "Item da lista de serviço inexistente (LC 116/2003).")
E310 = erro(
    "E310", "Grupo IBS/CBS inconsistente: valor sem alíquota ou alíquota sem base de cálculo."
)
E311 = erro("E311", "Grupo IBS/CBS: valor diferente de base de cálculo x alíquota.")
E312 = erro("E312", "Grupo IBS/CBS sem a classificação tributária (cClassTrib).")
E999 = erro("E999", "Erro de autorização simulado pelo sandbox ([sandbox:erro]).")
E523_PRAZO = erro(
    "E523", "nota que você está tentando cancelar está fora do prazo permitido para cancelamento"
)
E523_RECUSADO = erro("E523", "Prefeitura recusou o cancelamento ([sandbox:nao_cancela]).")


class ScenarioError(ValueError):
    """A `/_sandbox/scenario` body or a marker value that cannot be understood."""


@dataclass(frozen=True)
class Markers:
    erro: bool = False
    delay: float | None = None
    sem_callback: bool = False
    http500: int = 0
    nao_cancela: bool = False


@dataclass(frozen=True)
class Scenario:
    """An outcome pre-arranged for one ref; `None`/0/False fields defer to markers and config."""

    status: Literal["autorizado", "erro_autorizacao"] | None = None
    erros: tuple[Erro, ...] = ()
    delay: float | None = None
    http500: int = 0
    drop_callback: bool = False


@dataclass(frozen=True)
class Plan:
    """What the shell does with one accepted note, merged from config, markers and scenario."""

    delay: float
    http500: int
    send_callbacks: bool
    nao_cancela: bool


@dataclass(frozen=True)
class Decision:
    erros: tuple[Erro, ...] = ()

    @property
    def authorized(self) -> bool:
        return not self.erros


@dataclass(frozen=True)
class NotaAutorizada:
    numero: int
    codigo_verificacao: str
    data_emissao: str
    url: str
    url_danfse: str
    caminho_xml_nota_fiscal: str

    @property
    def xml_name(self) -> str:
        """The file name the XML route is asked for, without directory and extension."""
        return self.caminho_xml_nota_fiscal.rsplit("/", 1)[-1].removesuffix(".xml")

    def fields(self) -> dict[str, str]:
        # Focus sends numero as a string ("233"), like every other identifier.
        return {
            "numero": str(self.numero),
            "codigo_verificacao": self.codigo_verificacao,
            "data_emissao": self.data_emissao,
            "url": self.url,
            "url_danfse": self.url_danfse,
            "caminho_xml_nota_fiscal": self.caminho_xml_nota_fiscal,
        }


def digits(value: object) -> str:
    """Focus ignores non-digit characters of CNPJ/CPF/IM: "07.504.505/0001-32" is accepted."""
    return re.sub(r"\D", "", str(value)) if value is not None else ""


def section(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A nested object of the document, {} when absent or malformed (rules never crash)."""
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def _decimal(value: object) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def discriminacao(doc: dict[str, Any]) -> str:
    value = section(doc, "servico").get("discriminacao")
    return value if isinstance(value, str) else ""


def parse_markers(text: str) -> Markers:
    """Reads `[sandbox:...]` markers; unknown names are ignored so prose may contain brackets."""
    found: dict[str, str] = {m.group(1): m.group(2) or "" for m in _MARKER.finditer(text)}
    delay = _non_negative(found["delay"], "delay") if "delay" in found else None
    http500 = int(_non_negative(found["http500"], "http500")) if "http500" in found else 0
    return Markers(
        erro="erro" in found,
        delay=delay,
        sem_callback="sem_callback" in found,
        http500=http500,
        nao_cancela="nao_cancela" in found,
    )


def _non_negative(raw: object, name: str) -> float:
    number = _decimal(raw)
    if number is None or number < 0:
        raise ScenarioError(f"{name} deve ser um número >= 0: {raw!r}")
    return float(number)


def parse_scenario(body: object) -> tuple[str, Scenario]:
    """Validates a `/_sandbox/scenario` body and returns (ref, scenario)."""
    if not isinstance(body, dict):
        raise ScenarioError("corpo deve ser um objeto JSON")
    ref = body.get("ref")
    if not isinstance(ref, str) or not ref:
        raise ScenarioError("ref não informado")
    status = body.get("status")
    if status not in (None, "autorizado", "erro_autorizacao"):
        raise ScenarioError(f"status inválido: {status!r}")
    erros = tuple(_scenario_erro(e) for e in body.get("erros") or ())
    if status == "erro_autorizacao" and not erros:
        erros = (E999,)
    delay = body.get("delay")
    return ref, Scenario(
        status=status,
        erros=erros,
        delay=None if delay is None else _non_negative(delay, "delay"),
        http500=int(_non_negative(body.get("http500", 0), "http500")),
        drop_callback=bool(body.get("drop_callback", False)),
    )


def _scenario_erro(raw: object) -> Erro:
    if not isinstance(raw, dict) or not raw.get("codigo") or not raw.get("mensagem"):
        raise ScenarioError(f"erro deve ter codigo e mensagem: {raw!r}")
    correcao = raw.get("correcao")
    return {
        "codigo": str(raw["codigo"]),
        "mensagem": str(raw["mensagem"]),
        "correcao": None if correcao is None else str(correcao),
    }


def plan(doc: dict[str, Any], scenario: Scenario | None, default_delay: float) -> Plan:
    markers = parse_markers(discriminacao(doc))
    scenario = scenario or Scenario()
    delay = next(
        (d for d in (scenario.delay, markers.delay) if d is not None),
        default_delay,
    )
    return Plan(
        delay=delay,
        http500=scenario.http500 or markers.http500,
        send_callbacks=not (scenario.drop_callback or markers.sem_callback),
        nao_cancela=markers.nao_cancela,
    )


def decide(doc: dict[str, Any], scenario: Scenario | None = None) -> Decision:
    """The prefeitura's verdict on a document (rules in the module docstring)."""
    if scenario is not None and scenario.status == "autorizado":
        return Decision()
    if scenario is not None and scenario.status == "erro_autorizacao":
        return Decision(erros=scenario.erros)
    checks = (
        _regime,
        _aliquota,
        _valor_servicos,
        _item_lista_servico,
        _ibs_cbs_pairs,
        _ibs_cbs_values,
        _ibs_cbs_classificacao,
        _marker_erro,
    )
    return Decision(erros=tuple(e for check in checks if (e := check(doc)) is not None))


def _regime(doc: dict[str, Any]) -> Erro | None:
    municipio = digits(section(doc, "prestador").get("codigo_municipio"))
    if municipio not in REGIME_OBRIGATORIO:
        return None
    regime = doc.get("regime_especial_tributacao")
    return None if str(regime).strip() in REGIMES_VALIDOS else E145


def _aliquota(doc: dict[str, Any]) -> Erro | None:
    raw = section(doc, "servico").get("aliquota")
    if raw is None:
        return None
    aliquota = _decimal(raw)
    return None if aliquota is not None and 0 <= aliquota <= ALIQUOTA_MAXIMA else E160


def _valor_servicos(doc: dict[str, Any]) -> Erro | None:
    valor = _decimal(section(doc, "servico").get("valor_servicos"))
    return None if valor is not None and valor > 0 else E170


def _item_lista_servico(doc: dict[str, Any]) -> Erro | None:
    return None if is_item_lc116(section(doc, "servico").get("item_lista_servico")) else E180


def is_item_lc116(value: object) -> bool:
    match = _ITEM_LC116.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        return False
    grupo, subitem = int(match.group(1)), int(match.group(2))
    return grupo in _LC116_GRUPOS and subitem > 0


# (value, rate) of each IBS/CBS tax; the base is shared.
IBS_CBS_PAIRS = (
    ("ibs_uf_valor", "ibs_uf_aliquota"),
    ("ibs_mun_valor", "ibs_mun_aliquota"),
    ("cbs_valor", "cbs_aliquota"),
)
_CENT = Decimal("0.01")


def _ibs_cbs_pairs(doc: dict[str, Any]) -> Erro | None:
    servico = section(doc, "servico")
    base = _decimal(servico.get("ibs_cbs_base_calculo"))
    for valor, aliquota in IBS_CBS_PAIRS:
        has_valor = _decimal(servico.get(valor)) is not None
        has_aliquota = _decimal(servico.get(aliquota)) is not None
        if (has_valor and not has_aliquota) or (has_aliquota and base is None):
            return E310
    return None


def _ibs_cbs_values(doc: dict[str, Any]) -> Erro | None:
    servico = section(doc, "servico")
    base = _decimal(servico.get("ibs_cbs_base_calculo"))
    if base is None:
        return None
    for valor, aliquota in IBS_CBS_PAIRS:
        value, rate = _decimal(servico.get(valor)), _decimal(servico.get(aliquota))
        if value is not None and rate is not None:
            expected = (base * rate / 100).quantize(_CENT)
            if abs(value - expected) > _CENT:
                return E311
    return None


def _ibs_cbs_classificacao(doc: dict[str, Any]) -> Erro | None:
    servico = section(doc, "servico")
    fields = [name for pair in IBS_CBS_PAIRS for name in pair]
    if not any(_decimal(servico.get(name)) is not None for name in fields):
        return None
    classificacao = servico.get("ibs_cbs_classificacao_tributaria")
    return None if isinstance(classificacao, str) and classificacao else E312


# XML tags (ABRASF-style names, as municipalities adopting the national layout use them) of the
# 2026 fields echoed in the note's XML.
XML_EXTRAS = (
    ("servico", "codigo_nbs", "CodigoNbs"),
    ("servico", "codigo_indicador_operacao", "IndicadorOperacao"),
    ("servico", "ibs_cbs_classificacao_tributaria", "IbsCbsClassificacaoTributaria"),
    ("servico", "ibs_cbs_situacao_tributaria", "IbsCbsSituacaoTributaria"),
    ("servico", "ibs_cbs_base_calculo", "IbsCbsBaseCalculo"),
    ("servico", "ibs_uf_aliquota", "IbsUfAliquota"),
    ("servico", "ibs_mun_aliquota", "IbsMunAliquota"),
    ("servico", "cbs_aliquota", "CbsAliquota"),
    ("servico", "ibs_uf_valor", "IbsUfValor"),
    ("servico", "ibs_mun_valor", "IbsMunValor"),
    ("servico", "cbs_valor", "CbsValor"),
    ("tomador", "nif", "TomadorNif"),
    ("tomador", "motivo_ausencia_nif", "TomadorMotivoAusenciaNif"),
    ("intermediario", "nif", "IntermediarioNif"),
)


def xml_extras(doc: dict[str, Any]) -> dict[str, str]:
    """The 2026 fields the document carries, by XML tag, as the client wrote them."""
    out: dict[str, str] = {}
    for part, name, tag in XML_EXTRAS:
        value = section(doc, part).get(name)
        if value is not None and value is not False and value != "":
            out[tag] = str(value)
    return out


CANCEL_SUFFIX = "-cancelamento"


def caminho_xml_cancelamento(nota: NotaAutorizada) -> str:
    """Beside the note's XML, under a name only its holder knows (it extends the note's)."""
    return f"/notas_fiscais_servico/{nota.xml_name}{CANCEL_SUFFIX}.xml"


def cancelamento_xml(
    nota: NotaAutorizada, *, cnpj: str, municipio: str, cancelled_at: datetime, motivo: str
) -> bytes:
    """The prefeitura's cancellation record (ABRASF CancelarNfseResposta, reduced)."""
    root = ET.Element("CancelarNfseResposta", xmlns="http://www.abrasf.org.br/nfse.xsd")
    pedido = ET.SubElement(ET.SubElement(root, "Cancelamento"), "Confirmacao")
    inf = ET.SubElement(pedido, "InfPedidoCancelamento")
    fields = {
        "Numero": str(nota.numero),
        "CodigoVerificacao": nota.codigo_verificacao,
        "CnpjPrestador": cnpj,
        "CodigoMunicipio": municipio,
        "CodigoCancelamento": "1",
        "MotivoCancelamento": motivo,
    }
    for tag, text in fields.items():
        ET.SubElement(inf, tag).text = text
    ET.SubElement(pedido, "DataHora").text = data_emissao(cancelled_at)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _marker_erro(doc: dict[str, Any]) -> Erro | None:
    return E999 if parse_markers(discriminacao(doc)).erro else None


def codigo_verificacao(cnpj: str, numero: int) -> str:
    digest = hashlib.sha256(f"{cnpj}:{numero}".encode()).hexdigest().upper()
    return f"{digest[:4]}-{digest[4:7]}"


def authorize(
    doc: dict[str, Any], *, numero: int, authorized_at: datetime, base_url: str
) -> NotaAutorizada:
    """The fields the prefeitura attaches to an authorized note."""
    prestador = section(doc, "prestador")
    cnpj = digits(prestador.get("cnpj"))
    municipio = digits(prestador.get("codigo_municipio"))
    codigo = codigo_verificacao(cnpj, numero)
    espelho = f"{base_url.rstrip('/')}/nfse/{cnpj}/{numero}"
    xml = f"NFSe{cnpj}{municipio}-{numero:09d}-{codigo.replace('-', '')}.xml"
    return NotaAutorizada(
        numero=numero,
        codigo_verificacao=codigo,
        data_emissao=data_emissao(authorized_at),
        url=espelho,
        url_danfse=f"{espelho}/danfse.pdf",
        caminho_xml_nota_fiscal=f"/notas_fiscais_servico/{xml}",
    )


def data_emissao(instant: datetime) -> str:
    """Prefeituras answer in Brasília time with an explicit offset, to the second."""
    aware = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    return aware.astimezone(BRASILIA).replace(microsecond=0).isoformat()


def justificativa_valida(value: object) -> bool:
    return isinstance(value, str) and 15 <= len(value.strip()) <= 255


def cancel_refusal(
    *, authorized_at: float, now: float, window: float, nao_cancela: bool
) -> Erro | None:
    """Why the prefeitura refuses a cancel (erro_cancelamento), or None when it accepts."""
    if nao_cancela:
        return E523_RECUSADO
    if now - authorized_at > window:
        return E523_PRAZO
    return None
