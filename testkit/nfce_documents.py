"""NFC-e documents the tests share: a valid Emites-Client document, official shapes, keys."""

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


# --- documents in the shapes of the official Emites-Client examples (nfce/examples of its API
# docs): written here, not copied, with values every validator and the sandbox's SEFAZ accept.

HOMOLOGACAO = "NOTA FISCAL EMITIDA EM AMBIENTE DE HOMOLOGACAO - SEM VALOR FISCAL"
CONSUMIDOR_HOMOLOGACAO = "NF-E EMITIDA EM AMBIENTE DE HOMOLOGACAO - SEM VALOR FISCAL"
ACQUIRER_CNPJ = "11375787000192"


def _official_product(**extra: Any) -> dict[str, Any]:
    return {
        "cest": "1300402",
        "cfop": "5102",
        "codigo_ean": "7891000315507",
        "ean_unidade_trib": "7891000315507",
        "ncm": "22086000",
        "codigo_produto": "14600",
        "descricao": HOMOLOGACAO,
        "informacoes_adicionais": "",
        "num_item_pedido": 1,
        "num_pedido": "5100003910",
        "codigo_origem_produto": 0,
        "quantidade_comercial": 2.0,
        "quantidade_tributavel": 2.0,
        "unidade_comercial": "UN",
        "unidade_tributavel": "UN",
        "valor_desconto": 0.0,
        "valor_frete": 0.0,
        "outras_despesas": 0.0,
        "valor_seguro": 0.0,
        "valor_total_produto": 200.0,
        "valor_unitario_comercial": 100.0,
        "valor_unitario_tributario": 100.0,
        **extra,
    }


def _card_payment(**extra: Any) -> list[dict[str, Any]]:
    cartao = {
        "tipo_integracao": 1,
        "cnpj_credenciadora": ACQUIRER_CNPJ,
        "bandeira_operadora": "01",
        "numero_autorizacao_operacao": "1234567890",
        **extra,
    }
    return [
        {"tipo_de_pagamento": "03", "valor_do_pagamento": 200.0, "modalidade": 0, "cartao": cartao}
    ]


def codes_as_numbers() -> dict[str, Any]:
    """The official examples' codes as JSON integers: IBGE and BACEN codes included."""
    return {
        "cliente": {
            "cpf_cnpj": VALID_CPF,
            "nome": CONSUMIDOR_HOMOLOGACAO,
            "pessoa_fisica_juridica": "person",
            "email": "maria@example.com",
            "endereco": {
                "logradouro": "SQS 308 Bloco C",
                "numero": "101",
                "bairro": "Asa Sul",
                "codigo_municipio": 5300108,
                "nome_municipio": "Brasília",
                "cep": "70355030",
                "uf": "DF",
                "codigo_pais": 1058,
                "nome_pais": "Brasil",
            },
        },
        "destino_operacao": 1,
        "finalidade_nfe": 1,
        "indicador_consumidor_final": 1,
        "forma_de_pagamento": _card_payment(),
        "indicador_presenca": 1,
        "natureza_operacao": "venda",
        "produtos": [_official_product()],
        "tipo_impressao": 4,
        "tipo_operacao": 1,
        "transporte": {"codigo_modalidade": 9},
    }


def codes_as_digit_strings() -> dict[str, Any]:
    """The same note with every integer code written as its digit string."""
    document = codes_as_numbers()
    for field in ("destino_operacao", "finalidade_nfe", "indicador_consumidor_final",
                  "indicador_presenca", "tipo_impressao", "tipo_operacao"):  # fmt: skip
        document[field] = str(document[field])
    endereco = document["cliente"]["endereco"]
    endereco["codigo_municipio"], endereco["codigo_pais"] = "5300108", "1058"
    payment = document["forma_de_pagamento"][0]
    payment["modalidade"], payment["cartao"]["tipo_integracao"] = "0", "1"
    produto = document["produtos"][0]
    produto["codigo_origem_produto"], produto["num_item_pedido"] = "0", "1"
    document["transporte"]["codigo_modalidade"] = "9"
    return document


EMPTY_OPTIONAL_TEXTS = (
    "cliente.endereco.complemento",
    "cliente.endereco.nome_pais",
    "informacoes_adicionais.informacoes_fisco",
    "produtos.0.informacoes_adicionais",
    "produtos.0.num_pedido",
)


def empty_optional_texts() -> dict[str, Any]:
    """`""` in the optional texts the official schema gives no minimum length (the examples'
    `produtos[].informacoes_adicionais`); `EMPTY_OPTIONAL_TEXTS` lists them."""
    document = codes_as_numbers()
    document["cliente"]["endereco"].update(complemento="", nome_pais="")
    document["informacoes_adicionais"] = {
        "informacoes_contribuinte": "Obrigado pela preferência",
        "informacoes_fisco": "",
    }
    document["produtos"][0]["num_pedido"] = ""
    return document


FOREIGN_ID = "CVV006104"


def foreign_customer_mfe() -> dict[str, Any]:
    """A foreign customer (idEstrangeiro) in a shop, paying as the MFe example does (card with
    merchant id and currency), with the MFe example's extra product and customer fields."""
    document = codes_as_numbers()
    document["cliente"] = {
        "cpf_cnpj": FOREIGN_ID,
        "nome": CONSUMIDOR_HOMOLOGACAO,
        "pessoa_fisica_juridica": "foreign",
        "regime_tributario_diferenciado": "LFEM",
        "email": "visitor@example.com",
    }
    document["engine_de_calculo"] = "taxweb"
    document["forma_de_pagamento"] = _card_payment(merchant_id="123456", tp_moeda="USD")
    document["informacoes_adicionais"] = {
        "informacoes_contribuinte": "Passaporte CVV006104",
        "observacoes_fisco": [{"campo": "Passaporte", "texto": FOREIGN_ID}],
    }
    document["produtos"] = [
        _official_product(
            aplicacao="C",
            fabricacao=1,
            exncm="22",
            extipi="22",
            cdu1="DF",
            modBC=0,
            modBCST=0,
            valor_ultima_entrada=20.0,
        )
    ]
    return document


def international_with_address() -> dict[str, Any]:
    """The official international example's customer: a foreign id with an address abroad
    (uf EX, IBGE 9999999, BACEN 2453) in an internal operation."""
    document = foreign_customer_mfe()
    document["cliente"]["cpf_cnpj"] = "123456"
    document["cliente"]["endereco"] = {
        "logradouro": "Calle de Bailen",
        "numero": "S/N",
        "bairro": "Cortes",
        "codigo_municipio": 9999999,
        "nome_municipio": "Madrid",
        "cep": "00028071",
        "uf": "EX",
        "codigo_pais": 2453,
        "nome_pais": "Spain",
    }
    return document


def full_request() -> dict[str, Any]:
    """The official full example's groups: authorized XML readers, fisco notes, delivery
    address (integer IBGE code), ICMS withholding, carrier, vehicle and volumes."""
    document = codes_as_numbers()
    document["informacoes_adicionais"] = {
        "informacoes_contribuinte": "Informações complementares de interesse do Contribuinte",
        "informacoes_fisco": "Informações adicionais de interesse do Fisco",
        "observacoes_fisco": [{"campo": "Nome do campo", "texto": "Observação do campo"}],
    }
    document["lista_autorizacao"] = ["77184642538", "31065377000152"]
    entrega = {k: v for k, v in document["cliente"]["endereco"].items() if "pais" not in k}
    document["transporte"] = {
        "codigo_modalidade": 9,
        "endereco_entrega": {**entrega, "complemento": "Sala 128"},
        "retencao_icms": {
            "aliquota_retencao": 0.0,
            "cfop": "5102",
            "codigo_municipio": 5300108,
            "uf": "DF",
            "valor_base_calculo": 0.0,
            "valor_retido": 0.0,
            "valor_servico": 0.0,
        },
        "transportadora": {
            "cpf_cnpj": "81043396000156",
            "endereco_completo": "Rua do Economista, 256",
            "inscricao_estadual": "ISENTO",
            "nome_municipio": "Brasília",
            "razao_social": "Silva & Silva Transporte Ltda",
            "uf": "DF",
        },
        "valor_total_frete": 0.0,
        "veiculo": {"placa": "EEE3344", "rntc": "230483JKHE", "uf": "DF"},
        "volume_transportado": [
            {
                "especie": "Caixa",
                "marca": "FlexBox",
                "numeracao": "333",
                "peso_bruto": 2.0,
                "peso_liquido": 1.9,
                "quantidade_volumes": 1,
            }
        ],
    }
    return document


OFFICIAL_SHAPES = {
    "codes-as-numbers": codes_as_numbers,
    "codes-as-digit-strings": codes_as_digit_strings,
    "empty-optional-texts": empty_optional_texts,
    "foreign-customer-mfe": foreign_customer_mfe,
    "full-request": full_request,
}
