"""Validation and normalisation of Focus NFe's NFS-e Nacional documents (`/v2/nfsen`).

The document is flat (no prestador/tomador objects) and Focus's list of optional fields is
long, so the documented core is validated (`schemas/nfsen.schema.json`: CNPJ/CPF check digits,
IBGE codes, the 6-digit national service code, dates, enums) and everything else is carried to
the provider as sent, within the bounds of `notaflow.nfse`, whose machinery (handlers, "no
value" markers, carry, error wording) this module shares.
"""

from __future__ import annotations

from typing import Any, Final

from notaflow import schemas
from notaflow.errors import InvalidDocument
from notaflow.nfse import compile_plan, def_messages, normalize_with

__all__ = ["mail_document", "normalize_nfsen", "prestador_document", "tomador_email"]

_SCHEMA: Final = schemas.load("nfsen")
_VALIDATOR: Final = schemas.validator("nfsen")
_PLAN: Final = compile_plan(_SCHEMA)
_MESSAGES: Final = def_messages(_SCHEMA["$defs"])


def normalize_nfsen(raw: object) -> dict[str, Any]:
    """Validate an NFS-e Nacional document and return it in canonical form (as
    `notaflow.nfse.normalize_nfse` does for `/v2/nfse`, without defaults: Focus documents none
    for the national layout). The prestador is identified by exactly one of `cnpj_prestador`
    and `cpf_prestador` (a MEI may issue under its CPF); the tomador by at most one."""
    doc = normalize_with(raw, _VALIDATOR, _PLAN, _MESSAGES)
    if "cnpj_prestador" in doc and "cpf_prestador" in doc:
        raise InvalidDocument(
            "cnpj_prestador",
            'Parâmetro "cnpj_prestador" inválido: informe cnpj_prestador ou cpf_prestador, '
            "não ambos",
        )
    if "cnpj_prestador" not in doc and "cpf_prestador" not in doc:
        raise InvalidDocument("cnpj_prestador", 'Parâmetro "cnpj_prestador" não informado')
    if "cnpj_tomador" in doc and "cpf_tomador" in doc:
        raise InvalidDocument(
            "cnpj_tomador",
            'Parâmetro "cnpj_tomador" inválido: informe cnpj_tomador ou cpf_tomador, não ambos',
        )
    return doc


def prestador_document(doc: dict[str, Any]) -> str:
    """The prestador's CNPJ (or a MEI's CPF) of a normalised document: the company it is
    issued for, which the tenant must have registered."""
    return str(doc.get("cnpj_prestador") or doc["cpf_prestador"])


def tomador_email(doc: dict[str, Any]) -> str | None:
    value = doc.get("email_tomador")
    return value if isinstance(value, str) and value else None


def mail_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The flat document in the municipal note's shape (prestador, tomador, servico), the one
    the e-mail templates read."""
    tomador = {
        key: doc[flat]
        for key, flat in (
            ("razao_social", "razao_social_tomador"),
            ("cnpj", "cnpj_tomador"),
            ("cpf", "cpf_tomador"),
            ("email", "email_tomador"),
        )
        if flat in doc
    }
    prestador = {
        key: doc[flat]
        for key, flat in (("cnpj", "cnpj_prestador"), ("cpf", "cpf_prestador"))
        if flat in doc
    }
    servico = {
        "valor_servicos": doc.get("valor_servico"),
        "discriminacao": doc.get("descricao_servico"),
    }
    return {
        "data_emissao": doc.get("data_emissao"),
        "prestador": prestador,
        "tomador": tomador,
        "servico": servico,
    }
