"""Documents as open-source ERP integrations build them for Focus in 2026 (see
shared/specs/focus-2026.md, section 1): built from records, not written by hand, so `false`,
`null` and `""` stand for "no value", flags are ABRASF's ("1" sim, "2" não), the IBS/CBS group
of the Reforma Tributária is there, and so are fields Focus takes without documenting them.

Written for these tests (no ERP's code is copied); shared by the unit and end-to-end tests.
"""

from __future__ import annotations

import copy
from typing import Any

PRESTADOR_CNPJ = "51916585000125"

# A municipal note from an ERP: a Brazilian tomador, the 2026 IBS/CBS test-year rates
# (CBS 0.9 %, IBS 0.1 %), ABRASF flags, "no value" markers, undocumented fields.
ERP_NFSE: dict[str, Any] = {
    "data_emissao": "2026-01-15T10:30:00-03:00",
    "natureza_operacao": "1",
    "regime_especial_tributacao": False,
    "optante_simples_nacional": "1",
    "incentivador_cultural": "2",
    "codigo_obra": False,
    "art": None,
    "razao_social": "EMPRESA EMISSORA LTDA",
    "status": "1",
    "finalidade_emissao": "1",
    "indicador_destinatario": "0",
    "operacao_onerosa": "1",
    "informacoes_adicionais_contribuinte": False,
    "prestador": {
        "cnpj": "51.916.585/0001-25",
        "inscricao_municipal": "12345",
        "codigo_municipio": "3516200",
    },
    "tomador": {
        "cnpj": "07504505000132",
        "cpf": False,
        "nif": None,
        "razao_social": "Acras Tecnologia da Informação LTDA",
        "email": "financeiro@acras.example",
        "telefone": "",
        "endereco": {
            "logradouro": "Rua Dias da Rocha Filho",
            "numero": "999",
            "complemento": False,
            "bairro": "Alto da XV",
            "codigo_municipio": "4106902",
            "uf": "PR",
            "cep": "80045-165",
        },
    },
    "servico": {
        "valor_servicos": 1000.0,
        "valor_deducoes": 0.0,
        "valor_pis": False,
        "iss_retido": "2",
        "aliquota": 2.0,
        "base_calculo": 1000.0,
        "valor_iss": 20.0,
        "item_lista_servico": "0107",
        "codigo_cnae": False,
        "codigo_tributario_municipio": "620910000",
        "discriminacao": "Desenvolvimento de software sob encomenda - janeiro/2026",
        "codigo_municipio_incidencia": "3516200",
        "percentual_total_tributos": "13.45",
        "fonte_total_tributos": "IBPT",
        "codigo_nbs": "115021000",
        "codigo_indicador_operacao": "100301",
        "ibs_cbs_classificacao_tributaria": "000001",
        "ibs_cbs_situacao_tributaria": "000",
        "ibs_cbs_base_calculo": "1000.00",
        "ibs_uf_aliquota": "0.10",
        "ibs_mun_aliquota": "0.00",
        "cbs_aliquota": "0.90",
        "ibs_uf_valor": "1.00",
        "ibs_mun_valor": "0.00",
        "cbs_valor": "9.00",
    },
}

# The same ERP, a foreign tomador: no CPF/CNPJ, a nif, no municipality of its own.
ERP_NFSE_FOREIGN: dict[str, Any] = {
    **copy.deepcopy(ERP_NFSE),
    "tomador": {
        "nif": "DE811907980",
        "motivo_ausencia_nif": None,
        "cnpj": False,
        "cpf": None,
        "razao_social": "Beispiel GmbH",
        "email": "rechnung@beispiel.example",
        "endereco": {"logradouro": "Hauptstrasse", "numero": "1", "codigo_municipio": "9999999"},
    },
}

# What notaflow knows of ERP_NFSE after normalisation (the fields it validates), as Focus
# receives them; every other field goes as sent.
ERP_NFSE_NORMALIZED_KNOWN: dict[str, Any] = {
    "optante_simples_nacional": True,
    "incentivador_cultural": False,
    "prestador.cnpj": PRESTADOR_CNPJ,
    "servico.iss_retido": False,
    "servico.valor_servicos": "1000.0",
    "tomador.endereco.cep": "80045165",
}

# The keys an ERP sends as "no value" in ERP_NFSE (absent at Focus, so not forwarded).
ERP_NFSE_ABSENT = (
    "regime_especial_tributacao",
    "codigo_obra",
    "art",
    "tomador.cpf",
    "tomador.cnpj",
    "tomador.nif",
    "tomador.telefone",
    "tomador.endereco.complemento",
    "servico.valor_pis",
    "servico.codigo_cnae",
)


def erp_nfse(**top: Any) -> dict[str, Any]:
    doc = copy.deepcopy(ERP_NFSE)
    doc.update(top)
    return doc


def dig(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value[part]
    return value


def has(doc: dict[str, Any], dotted: str) -> bool:
    *parents, last = dotted.split(".")
    value: Any = doc
    for part in parents:
        value = value.get(part, {})
    return last in value


def expected_at_provider(sent: dict[str, Any], normalized: dict[str, Any]) -> None:
    """Assert that what reached the provider (`normalized`) is `sent` field for field: every
    field sent is there, unchanged unless notaflow knows it (then it is normalised) or it meant
    "no value" (then it is absent)."""

    def walk(a: dict[str, Any], b: dict[str, Any], prefix: str) -> None:
        for key, value in a.items():
            path = prefix + key
            if value is None or value == "" or (value is False and path in ERP_NFSE_ABSENT):
                assert key not in b or b[key] == value, path
                continue
            assert key in b, f"{path} was dropped"
            if path in ERP_NFSE_NORMALIZED_KNOWN:
                assert b[key] == ERP_NFSE_NORMALIZED_KNOWN[path], path
            elif isinstance(value, dict) and isinstance(b[key], dict):
                walk(value, b[key], path + ".")
            elif isinstance(value, float) and isinstance(b[key], str):
                assert float(b[key]) == value, path  # a known decimal, now a string
            else:
                assert b[key] == value, path

    walk(sent, normalized, "")


def servico_xml_ns(path: str) -> str:
    """An ElementTree path in the ABRASF namespace the sandbox's XML uses."""
    ns = "{http://www.abrasf.org.br/nfse.xsd}"
    return "/".join(ns + part for part in path.split("/"))


# An NFS-e Nacional as the same ERP sends it to /v2/nfsen: flat, numbers as strings (Focus's
# documented Python example does so), PIS/COFINS, "no value" markers, fields notaflow only carries.
ERP_NFSEN: dict[str, Any] = {
    "data_emissao": "2026-01-15T10:30:00-0300",
    "data_competencia": "2026-01-15",
    "codigo_municipio_emissora": "3516200",
    "cnpj_prestador": PRESTADOR_CNPJ,
    "cpf_prestador": None,
    "inscricao_municipal_prestador": "12345",
    "codigo_opcao_simples_nacional": "3",
    "regime_especial_tributacao": "0",
    "cnpj_tomador": "07504505000132",
    "cpf_tomador": False,
    "razao_social_tomador": "Acras Tecnologia da Informação LTDA",
    "codigo_municipio_tomador": "4106902",
    "cep_tomador": "80045165",
    "logradouro_tomador": "Rua Dias da Rocha Filho",
    "numero_tomador": "999",
    "complemento_tomador": "",
    "bairro_tomador": "Alto da XV",
    "telefone_tomador": None,
    "email_tomador": "contas.nacional@acras.example",
    "codigo_municipio_prestacao": "3516200",
    "codigo_tributacao_nacional_iss": "010701",
    "codigo_tributacao_municipal_iss": "620910000",
    "codigo_nbs": "115021000",
    "descricao_servico": "Desenvolvimento de software sob encomenda - janeiro/2026",
    "valor_servico": "1000.00",
    "tributacao_iss": "1",
    "tipo_retencao_iss": "1",
    "percentual_aliquota_relativa_municipio": "2.00",
    "percentual_total_tributos_federais": "9.25",
    "percentual_total_tributos_estaduais": "0",
    "percentual_total_tributos_municipais": "2.00",
    "situacao_tributaria_pis_cofins": "01",
    "base_calculo_pis_cofins": "1000.00",
    "aliquota_pis": "0.65",
    "aliquota_cofins": "3.00",
    "valor_pis": "6.50",
    "valor_cofins": "30.00",
    "tipo_retencao_pis_cofins": "2",
    "valor_irrf": "15.00",
    "informacoes_complementares": False,
    "indicador_operacao_consumo_pessoal": "0",
    "codigo_interno_contribuinte": {"erp": "odoo", "id": 42},
}

# The "no value" markers of ERP_NFSEN (absent at Focus).
ERP_NFSEN_ABSENT = (
    "cpf_prestador",
    "cpf_tomador",
    "complemento_tomador",
    "telefone_tomador",
    "informacoes_complementares",
)


def expected_nfsen_at_provider(sent: dict[str, Any], forwarded: dict[str, Any]) -> None:
    """Every field sent reached the provider as sent (its strings are already canonical),
    except the "no value" markers, which are absent."""
    for key, value in sent.items():
        if key in ERP_NFSEN_ABSENT:
            assert key not in forwarded, key
        else:
            assert forwarded.get(key) == value, (key, forwarded.get(key), value)
    assert set(forwarded) <= set(sent), set(forwarded) - set(sent)
