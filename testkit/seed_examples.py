"""The documents of seed 001, as its examples send them (only the ref differs)."""

from __future__ import annotations

import copy
from typing import Any

# "Exemplo de um arquivo JSON" — its prestador CNPJ 18765499000199 fails the check digit.
JSON_EXAMPLE: dict[str, Any] = {
    "data_emissao": "2017-09-21T22:15:00",
    "prestador": {
        "cnpj": "18765499000199",
        "inscricao_municipal": "12345",
        "codigo_municipio": "3516200",
    },
    "tomador": {
        "cnpj": "07504505000132",
        "razao_social": "Acras Tecnologia da Informação LTDA",
        "email": "contato@focusnfe.com.br",
        "endereco": {
            "logradouro": "Rua Dias da Rocha Filho",
            "numero": "999",
            "complemento": "Prédio 04 - Sala 34C",
            "bairro": "Alto da XV",
            "codigo_municipio": "4106902",
            "uf": "PR",
            "cep": "80045165",
        },
    },
    "servico": {
        "aliquota": 3,
        "discriminacao": "Nota fiscal referente a serviços prestados",
        "iss_retido": "false",
        "item_lista_servico": "0107",
        "codigo_tributario_municipio": "620910000",
        "valor_servicos": 1.0,
    },
}

# The Python `requests` example: booleans and numbers as strings, razao_social and status at
# the top level; its CNPJs (99999999999999) and municipality 9999999 are placeholders.
PYTHON_EXAMPLE: dict[str, Any] = {
    "razao_social": "ACME INK",
    "data_emissao": "2018-02-26T12:00:00-03:00",
    "incentivador_cultural": "false",
    "natureza_operacao": "1",
    "optante_simples_nacional": "true",
    "status": "1",
    "prestador": {
        "cnpj": "99999999999999",
        "inscricao_municipal": "99999999",
        "codigo_municipio": "9999999",
    },
    "servico": {
        "aliquota": "2.92",
        "base_calculo": "1.00",
        "discriminacao": "SERVICOS E MAO DE OBRA",
        "iss_retido": "0",
        "item_lista_servico": "1412",
        "valor_iss": "11.68",
        "valor_liquido": "1.00",
        "valor_servicos": "1.00",
    },
    "tomador": {
        "cnpj": "99999999999999",
        "razao_social": "Parkinson da silva coelho JR",
        "endereco": {
            "bairro": "São Miriti",
            "cep": "31999-000",
            "codigo_municipio": "9999999",
            "logradouro": "João Batista Netos",
            "numero": "34",
            "uf": "MG",
        },
    },
}


def with_valid_cnpjs(doc: dict[str, Any]) -> dict[str, Any]:
    """The example as a client with a real company sends it: valid CNPJs (and a real
    municipality where the example has the 9999999 placeholder)."""
    out = copy.deepcopy(doc)
    out["prestador"]["cnpj"] = "51916585000125"
    if out.get("tomador", {}).get("cnpj"):
        out["tomador"]["cnpj"] = "07504505000132"
    if out["prestador"]["codigo_municipio"] == "9999999":
        out["prestador"]["codigo_municipio"] = "4106902"
    return out
