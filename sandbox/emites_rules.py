"""How the sandbox Emites-Client (and the SEFAZ behind it) decides an NFC-e, without I/O.

`sandbox.emites` is the asyncio TCP shell: it keeps the state (numbers, notes, clock) and calls
in here for every decision, so each rule is tested without a socket. Deliberately independent
of `notaflow.nfce`: the sandbox stands in for the real service, so it validates with the same
schema file but its own checks and its own (Java bean-validation-like) messages, keyed by
property paths such as `produtos[0].ncm`.

CREATE_NFCE (`validation_errors`, then `sefaz_rejection`, then `emites_documents.authorize`):

    schema errors, a "" anywhere (Emites checks the minimum
    length of every non-null string), CPF/CNPJ check digits,
    IBGE code, UF                                          -> rejeitada, erros by field path
    SEFAZ's rules, as `erros.rejeicao`, first that applies:
      destino_operacao not 1 (interna)                     -> 707
      customer address with a country other than 1058      -> 511 (the operation is internal)
      customer address in EX outside 9999999, or back      -> 509
      foreign customer id not 5..20 letters or digits      -> 372
      foreign customer, not presencial (1)                 -> 722
      foreign customer, not consumidor final               -> 723
      a product with ncm "00"                              -> 471
      payments below the note's total                      -> 865
    otherwise                                              -> sucesso, the request echoed plus
        id, nfe_numero, serie, danfe_url, xml_url, danfe (a real PDF, base64), xml (base64),
        resposta_emissao {chave_acesso, codigo_verificacao, data_emissao, numero_protocolo}
        and produtos[i].tributacao

CANCEL_NFCE (`cancel_errors`, then `cancel_decision`):

    no/bad chave_acesso, motivo outside 15..255            -> rejeitada, erros by field
    a well-formed key the sandbox never issued             -> cancelamento_rejeitado 217
    already cancelled                                      -> cancelamento_rejeitado 218
    more than `cancel_window` seconds after authorization  -> cancelamento_rejeitado 501
    otherwise                                              -> cancelada, cancel_xml_url,
                                                              resposta_cancelamento
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, TypeGuard

import jsonschema_rs

from notaflow import schemas
from notaflow.brdocs import (
    access_key_check_digit,
    clean_document,
    valid_access_key,
    valid_cnpj,
    valid_cpf,
    valid_ibge_municipio,
    valid_uf,
)

MODELO_NFCE: Final = "65"
TP_EMIS_NORMAL: Final = "1"
AMBIENTE_HOMOLOGACAO: Final = "2"
MOTIVO_MIN, MOTIVO_MAX = 15, 255

REJEICAO_NCM: Final = "471 - Rejeição: Informado NCM=00 indevidamente"
REJEICAO_NAO_INTERNA: Final = "707 - Rejeição: NFC-e para operação interestadual ou com o exterior"
REJEICAO_PAIS: Final = (
    "511 - Rejeição: Não é de Operação com Exterior e Código País destinatário difere de 1058 "
    "(Brasil)"
)
REJEICAO_MUNICIPIO_EXTERIOR: Final = (
    "509 - Rejeição: Informado código de município diferente de 9999999 para operação com o "
    "exterior"
)
REJEICAO_ID_ESTRANGEIRO: Final = (
    "372 - Rejeição: Destinatário com identificação de estrangeiro com caracteres inválidos"
)
REJEICAO_ESTRANGEIRO_PRESENCA: Final = (
    "722 - Rejeição: Operação interna com idEstrangeiro informado deve ser presencial"
)
REJEICAO_ESTRANGEIRO_FINAL: Final = (
    "723 - Rejeição: Operação interna com idEstrangeiro informado deve ser para consumidor final"
)
BRASIL: Final = 1058
FOREIGN_ID: Final = re.compile(r"[0-9A-Za-z]{5,20}")
EXTERIOR: Final = ("EX", "9999999")
REJEICAO_PAGAMENTO: Final = "865 - Rejeição: Total dos pagamentos menor que o total da nota"
REJEICAO_NAO_CONSTA: Final = "217 - Rejeição: NF-e não consta na base de dados da SEFAZ"
REJEICAO_JA_CANCELADA: Final = "218 - Rejeição: NF-e já está cancelada na base de dados da SEFAZ"
REJEICAO_PRAZO: Final = "501 - Rejeicao: Prazo de Cancelamento Superior ao Previsto na Legislacao"

_PAYMENTS: Final = ("forma_pagamento", "forma_de_pagamento")
_NAO_NULO: Final = "não pode ser nulo"
_NAO_VAZIO: Final = "não pode ser vazio"


@dataclass(frozen=True)
class Emitente:
    cnpj: str = "22769530000131"
    razao_social: str = "EMITES SANDBOX LTDA"
    uf_code: str = "53"  # IBGE code of the UF: 53 = DF, like the spec's example keys


# --- CREATE_NFCE validation ---------------------------------------------------------------


def _java_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_message(error: jsonschema_rs.ValidationError) -> tuple[str, str]:
    kind = error.kind
    kinds = jsonschema_rs.ValidationErrorKind
    path = list(error.instance_path)
    if isinstance(kind, kinds.Required):
        return _java_path([*path, kind.property]), _NAO_NULO
    if isinstance(kind, kinds.OneOfNotValid):
        return "forma_pagamento", _NAO_NULO
    if isinstance(kind, kinds.OneOfMultipleValid):
        return "forma_pagamento", "informe forma_pagamento ou forma_de_pagamento, não ambos"
    field = _java_path(path)
    if error.instance == "":
        return field, _NAO_VAZIO
    if isinstance(kind, kinds.Enum):
        options = ", ".join(str(option) for option in kind.options if option is not None)
        return field, f"deve ser um dos valores: {options}"
    if isinstance(kind, kinds.MinItems | kinds.MaxItems):
        bounds = {"produtos": (1, 500)}.get(str(path[-1]) if path else "", (1, 100))
        return field, f"tamanho deve estar entre {bounds[0]} e {bounds[1]}"
    if isinstance(kind, kinds.MinLength | kinds.MaxLength):
        return (
            field,
            f"tamanho {'mínimo' if isinstance(kind, kinds.MinLength) else 'máximo'} é {kind.limit}",
        )
    if isinstance(kind, kinds.Minimum):
        return field, f"deve ser maior que ou igual à {kind.limit}"
    if isinstance(kind, kinds.ExclusiveMinimum):
        return field, f"deve ser maior que {kind.limit}"
    if isinstance(kind, kinds.Type):
        return field, "tipo inválido, esperado " + " ou ".join(kind.types)
    if path and path[-1] == "email":
        return field, "não é um endereço de e-mail válido"
    return field, "formato inválido"


def _empty_strings(value: object, path: list[str | int]) -> list[str]:
    if value == "":
        return [_java_path(path)]
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _empty_strings(v, [*path, k])]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _empty_strings(v, [*path, i])]
    return []


def is_foreign(cliente: object) -> TypeGuard[dict[str, Any]]:
    return isinstance(cliente, dict) and cliente.get("pessoa_fisica_juridica") == "foreign"


def _fiscal_errors(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    erros: dict[str, list[str]] = {}
    cliente = doc.get("cliente")
    if isinstance(cliente, dict):
        number = clean_document(str(cliente.get("cpf_cnpj", "")))
        if is_foreign(cliente):
            number = ""  # an idEstrangeiro: SEFAZ checks its characters (372)
        if len(number) == 11 and not valid_cpf(number):
            erros["cliente.cpf_cnpj"] = ["CPF inválido"]
        elif len(number) == 14 and not valid_cnpj(number):
            erros["cliente.cpf_cnpj"] = ["CNPJ inválido"]
        elif len(number) not in (0, 11, 14) or (not number and not is_foreign(cliente)):
            erros["cliente.cpf_cnpj"] = ["deve ser um CPF ou um CNPJ"]
        endereco = cliente.get("endereco")
        if isinstance(endereco, dict):
            if not valid_ibge_municipio(str(endereco.get("codigo_municipio"))):
                erros["cliente.endereco.codigo_municipio"] = ["código de município inválido"]
            if not valid_uf(str(endereco.get("uf"))):
                erros["cliente.endereco.uf"] = ["UF inválida"]
    return erros


def validation_errors(doc: object) -> dict[str, list[str]]:
    """Emites' own validation of a CREATE_NFCE payload: field path -> messages; {} if valid."""
    if not isinstance(doc, dict):
        return {"": ["o corpo deve ser um objeto JSON"]}
    validator = schemas.validator("nfce")
    erros: dict[str, list[str]] = {}
    if not validator.is_valid(doc):
        for error in validator.iter_errors(doc):
            field, message = _schema_message(error)
            if message not in erros.setdefault(field, []):
                erros[field].append(message)
        return erros
    for field in _empty_strings(doc, []):
        erros[field] = [_NAO_VAZIO]
    return erros or _fiscal_errors(doc)


def decimal_value(value: object) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def payments(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    for name in _PAYMENTS:
        if isinstance(doc.get(name), list):
            return list(doc[name])
    return []


def total(doc: Mapping[str, Any]) -> Decimal:
    """vNF: products less discounts plus freight, insurance and other expenses."""
    result = Decimal(0)
    for produto in doc.get("produtos", ()):
        result += decimal_value(produto.get("valor_total_produto"))
        result -= decimal_value(produto.get("valor_desconto"))
        result += decimal_value(produto.get("valor_frete"))
        result += decimal_value(produto.get("valor_seguro"))
        result += decimal_value(produto.get("valor_outras_despesas"))
        result += decimal_value(produto.get("outras_despesas"))  # the official schema's name
    return result


def _code(value: object, default: int) -> int:
    return default if value is None else int(str(value))


def _customer_rejection(doc: Mapping[str, Any]) -> str | None:
    """SEFAZ's rules on the operation's destination and the customer (MOC rules of the
    destinatário group as they apply to an NFC-e, model 65)."""
    if _code(doc.get("destino_operacao"), 1) != 1:
        return REJEICAO_NAO_INTERNA
    cliente = doc.get("cliente")
    if not isinstance(cliente, dict):
        return None
    endereco = cliente.get("endereco")
    if isinstance(endereco, dict):
        if _code(endereco.get("codigo_pais"), BRASIL) != BRASIL:
            return REJEICAO_PAIS
        abroad = (
            endereco.get("uf") == EXTERIOR[0],
            str(endereco.get("codigo_municipio")) == EXTERIOR[1],
        )
        if abroad[0] != abroad[1]:
            return REJEICAO_MUNICIPIO_EXTERIOR
    if is_foreign(cliente):
        if not FOREIGN_ID.fullmatch(str(cliente.get("cpf_cnpj", ""))):
            return REJEICAO_ID_ESTRANGEIRO
        if _code(doc.get("indicador_presenca"), 1) != 1:
            return REJEICAO_ESTRANGEIRO_PRESENCA
        if _code(doc.get("indicador_consumidor_final"), 1) != 1:
            return REJEICAO_ESTRANGEIRO_FINAL
    return None


def sefaz_rejection(doc: Mapping[str, Any]) -> str | None:
    """What SEFAZ would refuse in a document Emites accepted, as `erros.rejeicao`."""
    if (rejection := _customer_rejection(doc)) is not None:
        return rejection
    if any(produto.get("ncm") == "00" for produto in doc.get("produtos", ())):
        return REJEICAO_NCM
    paid = sum((decimal_value(p.get("valor_do_pagamento")) for p in payments(doc)), Decimal(0))
    if paid < total(doc):
        return REJEICAO_PAGAMENTO
    return None


# --- authorization ------------------------------------------------------------------------


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def codigo_numerico(cnpj: str, serie: int, numero: int) -> str:
    """cNF, the 8 random digits of the key; derived, so a replay gives the same key."""
    digest = hashlib.sha256(f"cNF:{cnpj}:{serie}:{numero}".encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big') % 10**8:08d}"


def access_key(emitente: Emitente, issued_at: datetime, serie: int, numero: int) -> str:
    """UF(2) AAMM(4) CNPJ(14) modelo 65 série(3) número(9) tpEmis(1) cNF(8) DV(1)."""
    first43 = (
        f"{emitente.uf_code}{issued_at:%y%m}{emitente.cnpj}{MODELO_NFCE}{serie:03d}"
        f"{numero:09d}{TP_EMIS_NORMAL}{codigo_numerico(emitente.cnpj, serie, numero)}"
    )
    return first43 + access_key_check_digit(first43)


def protocolo(emitente: Emitente, moment: datetime, sequence: int) -> str:
    """15 digits: ambiente(1) UF(2) AA(2) sequence(10), the layout SEFAZ protocols follow."""
    return f"{AMBIENTE_HOMOLOGACAO}{emitente.uf_code}{moment:%y}{sequence % 10**10:010d}"


def codigo_verificacao(chave: str) -> str:
    return hashlib.sha256(f"cv:{chave}".encode()).hexdigest()[:16].upper()


def tributacao(produto: Mapping[str, Any]) -> dict[str, Any]:
    """Simples Nacional (CSOSN 102, PIS/COFINS 49) and the IBPT-style approximate taxes."""
    valor = decimal_value(produto.get("valor_total_produto"))
    return {
        "icms_origem": produto.get("codigo_origem_produto", 0),
        "icms_situacao_tributaria": "102",
        "pis_situacao_tributaria": "49",
        "cofins_situacao_tributaria": "49",
        "valor_total_tributos": float((valor * Decimal("0.3145")).quantize(Decimal("0.01"))),
    }


def rejected(
    doc: object, erros: Mapping[str, list[str]], status: str = "rejeitada"
) -> dict[str, Any]:
    """A rejection echoes the request (when it is an object) with `status` and `erros`."""
    answer = dict(doc) if isinstance(doc, dict) else {}
    answer.update({"status": status, "erros": dict(erros)})
    return answer


# --- cancellation -------------------------------------------------------------------------


def cancel_errors(body: Mapping[str, Any]) -> dict[str, list[str]]:
    """Emites' validation of a CANCEL_NFCE payload: field -> messages; {} if well-formed."""
    erros: dict[str, list[str]] = {}
    chave = body.get("chave_acesso")
    if chave is None:
        erros["chave_acesso"] = [_NAO_NULO]
    elif not isinstance(chave, str) or len(chave) != 44 or not chave.isdigit():
        erros["chave_acesso"] = ["deve ter 44 dígitos"]
    elif not valid_access_key(chave):
        erros["chave_acesso"] = ["chave de acesso inválida (dígito verificador não confere)"]
    elif chave[20:22] != MODELO_NFCE:
        erros["chave_acesso"] = ["a chave de acesso não é de uma NFC-e (modelo 65)"]
    motivo = body.get("motivo")
    if motivo is not None and (
        not isinstance(motivo, str) or not MOTIVO_MIN <= len(motivo) <= MOTIVO_MAX
    ):
        erros["motivo"] = [f"tamanho deve estar entre {MOTIVO_MIN} e {MOTIVO_MAX}"]
    return erros


def cancel_rejection(
    authorized_at: float | None, cancelled: bool, now: float, window: float
) -> str | None:
    """SEFAZ's answer to a well-formed cancellation: None means it is accepted.
    `authorized_at` is None for a key the sandbox never issued."""
    if authorized_at is None:
        return REJEICAO_NAO_CONSTA
    if cancelled:
        return REJEICAO_JA_CANCELADA
    if now - authorized_at > window:
        return REJEICAO_PRAZO
    return None


def cancelled(
    authorized: Mapping[str, Any],
    *,
    emitente: Emitente,
    protocol_sequence: int,
    cancelled_at: datetime,
    public_url: str,
) -> dict[str, Any]:
    """The `cancelada` answer: the authorized note (without its big blobs) plus the event."""
    answer = {k: v for k, v in authorized.items() if k not in ("danfe", "xml")}
    chave = authorized["resposta_emissao"]["chave_acesso"]
    answer.update(
        {
            "status": "cancelada",
            "cancel_xml_url": f"{public_url}/nfce/{chave}-cancelamento.xml",
            "resposta_cancelamento": {
                "chave_acesso": chave,
                "numero_protocolo": protocolo(emitente, cancelled_at, protocol_sequence),
            },
        }
    )
    return answer
