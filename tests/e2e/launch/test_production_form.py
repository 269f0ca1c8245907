"""The production processes, separately started and configured by NOTAFLOW_* only, on SQLite
and on PostgreSQL: emit a note in the Focus dialect and watch it become authorized."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from notaflow.settings import Settings
from testkit.seed_examples import JSON_EXAMPLE, PYTHON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack


@pytest.fixture
def stack(settings: Settings, database_url: str, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(settings.replace(database_url=database_url), tmp_path).start()
    yield s
    s.stop()


def test_emit_authorize_query(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v2/nfse", params={"ref": "pf1"}, json=with_valid_cnpjs(JSON_EXAMPLE))
        assert r.status_code == 202, r.text
        assert r.json() == {
            "cnpj_prestador": "51916585000125",
            "ref": "pf1",
            "status": "processando_autorizacao",
        }
        # The Python example's form: body as a string (no content type), strings for booleans.
        r = c.post(
            "/v2/nfse", params={"ref": "pf2"}, content=json.dumps(with_valid_cnpjs(PYTHON_EXAMPLE))
        )
        assert r.status_code == 202, r.text
    note = stack.wait_status("pf1", {"autorizado"})
    for field in (
        "numero",
        "codigo_verificacao",
        "data_emissao",
        "url",
        "caminho_xml_nota_fiscal",
        "numero_rps",
        "serie_rps",
    ):
        assert note.get(field), (field, note)
    assert note["cnpj_prestador"] == "51916585000125" and note["ref"] == "pf1"
    xml = httpx.get(stack.base + note["caminho_xml_nota_fiscal"])
    assert xml.status_code == 200 and b"<" in xml.content
    assert stack.wait_status("pf2", {"autorizado"})["status"] == "autorizado"
    with stack.client() as c:
        again = c.post("/v2/nfse", params={"ref": "pf1"}, json=with_valid_cnpjs(JSON_EXAMPLE))
    assert again.status_code == 422 and again.json()["codigo"] == "nfe_autorizada"
