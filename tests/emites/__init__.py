"""Emites-Client NFC-e: wire framing, validation, the TCP adapter against the sandbox."""

from __future__ import annotations

import copy
from typing import Any

VALID_CPF = "02558352482"
VALID_CNPJ = "07504505000132"
SPEC_KEYS = (  # access keys shared/specs/emites-nfce.md gives as valid
    "53180922769530000131651110000001281355486170",
    "53181222769530000131650090000001731531212514",
)

_DOCUMENT: dict[str, Any] = {
    "natureza_operacao": "Venda ao consumidor",
    "indicador_presenca": 1,
    "forma_pagamento": [
        {
            "tipo_de_pagamento": "03",
            "valor_do_pagamento": 30.5,
            "modalidade": 0,
            "cartao": {
                "tipo_integracao": 2,
                "numero_autorizacao_operacao": "A1B2C3",
                "cnpj_credenciadora": VALID_CNPJ,
                "bandeira_operadora": "01",
            },
        }
    ],
    "produtos": [
        {
            "ncm": "22030000",
            "codigo_produto": "P1",
            "descricao": "Cerveja pilsen 350 ml",
            "codigo_origem_produto": 0,
            "quantidade_comercial": 2,
            "quantidade_tributavel": 2,
            "unidade_comercial": "UN",
            "unidade_tributavel": "UN",
            "valor_total_produto": 20.5,
            "valor_unitario_comercial": 10.25,
            "valor_unitario_tributario": 10.25,
            "cfop": "5102",
            "codigo_ean": "SEM GTIN",
        },
        {
            "ncm": "19059090",
            "codigo_produto": "P2",
            "descricao": "Pão de queijo",
            "codigo_origem_produto": 0,
            "quantidade_comercial": 1,
            "quantidade_tributavel": 1,
            "unidade_comercial": "KG",
            "unidade_tributavel": "KG",
            "valor_total_produto": 11.0,
            "valor_unitario_comercial": 11.0,
            "valor_unitario_tributario": 11.0,
            "valor_desconto": 1.0,
            "cest": "1706200",
            "codigo_ean": "7891000315507",
        },
    ],
    "transporte": {"codigo_modalidade": 9},
    "cliente": {
        "cpf_cnpj": "025.583.524-82",
        "nome": "José da Silva",
        "email": "jose@example.com",
        "endereco": {
            "logradouro": "SQS 308 Bloco C",
            "numero": "101",
            "bairro": "Asa Sul",
            "codigo_municipio": "5300108",
            "nome_municipio": "Brasília",
            "cep": "70355030",
            "uf": "DF",
        },
    },
    "informacoes_adicionais": {"informacoes_contribuinte": "Obrigado pela preferência"},
}


def valid_nfce(**changes: Any) -> dict[str, Any]:
    """A complete CREATE_NFCE document every validator accepts; `changes` replace top-level
    fields (None removes one)."""
    document = copy.deepcopy(_DOCUMENT)
    for name, value in changes.items():
        if value is None:
            document.pop(name, None)
        else:
            document[name] = value
    return document
