"""`notaflow dev` as a newcomer runs it: everything up, the seed's examples accepted as sent,
notes authorized or refused like a prefeitura would, and Ctrl-C stops every process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from notaflow.broker import free_port
from tests.e2e.seed_examples import JSON_EXAMPLE, PYTHON_EXAMPLE, with_valid_cnpjs
from tests.support import ROOT, wait_for, wait_http


class Dev:
    def __init__(self, tmp: Path) -> None:
        self.port, self.kafka_port = free_port(), free_port()
        self.data = tmp / "data"
        self.out = tmp / "dev.out"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "notaflow.cli",
                "dev",
                "--port",
                str(self.port),
                "--kafka-port",
                str(self.kafka_port),
                "--data-dir",
                str(self.data),
                "--sandbox-delay",
                "0.2",
            ],
            cwd=ROOT,
            stdout=open(self.out, "wb"),  # noqa: SIM115 - lives as long as the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        try:
            wait_http(f"{self.base}/readyz", timeout=90, proc=self.process)
            wait_for(lambda: "Ctrl-C stops everything" in self.out.read_text(), 10)
        except Exception as exc:
            self.stop()
            raise AssertionError(self.out.read_text()) from exc
        self.token = (self.data / "demo-token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, auth=(self.token, ""), timeout=10)

    def wait_status(self, ref: str, statuses: set[str]) -> dict[str, Any]:
        with self.client() as c:
            result: dict[str, Any] = wait_for(
                lambda: (b := c.get(f"/v2/nfse/{ref}").json()).get("status") in statuses and b,
                20,
                0.1,
            )
        return result

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    d = Dev(tmp_path_factory.mktemp("dev"))
    yield d
    d.stop()


def test_banner_prints_token_broker_and_a_working_curl(dev: Dev) -> None:
    banner = dev.out.read_text()
    assert dev.token in banner
    assert f"127.0.0.1:{dev.kafka_port}" in banner
    curl_line = next(line for line in banner.splitlines() if "curl" in line and "-X POST" in line)
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    out = subprocess.run(
        ["bash", "-c", curl_line.strip()], capture_output=True, text=True, timeout=20
    )
    body = json.loads(out.stdout)
    assert body["status"] == "processando_autorizacao", out.stdout
    assert dev.wait_status(body["ref"], {"autorizado"})["numero"]


def test_seed_json_example_unchanged_is_refused_for_its_cnpj(dev: Dev) -> None:
    with dev.client() as c:
        r = c.post("/v2/nfse", params={"ref": "seedjson"}, json=JSON_EXAMPLE)
    assert r.status_code == 400
    assert r.json()["codigo"] == "requisicao_invalida"
    assert "prestador.cnpj" in r.json()["mensagem"]
    with dev.client() as c:
        assert c.get("/v2/nfse/seedjson").status_code == 404


def test_seed_examples_with_valid_cnpjs_are_authorized(dev: Dev) -> None:
    with dev.client() as c:
        r1 = c.post("/v2/nfse", params={"ref": "seed1"}, json=with_valid_cnpjs(JSON_EXAMPLE))
        # requests.post(url, params=ref, data=json.dumps(nfse), auth=(token, "")): no type.
        r2 = c.post(
            "/v2/nfse",
            params={"ref": "seed2"},
            content=json.dumps(with_valid_cnpjs(PYTHON_EXAMPLE)),
        )
    assert (r1.status_code, r2.status_code) == (202, 202), (r1.text, r2.text)
    for ref in ("seed1", "seed2"):
        note = dev.wait_status(ref, {"autorizado"})
        assert {
            "numero",
            "codigo_verificacao",
            "data_emissao",
            "url",
            "caminho_xml_nota_fiscal",
            "numero_rps",
            "serie_rps",
        } <= note.keys()


def test_curl_upload_form(dev: Dev, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    doc = tmp_path / "arquivo.json"
    doc.write_text(json.dumps(with_valid_cnpjs(JSON_EXAMPLE), ensure_ascii=False))
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-u",
            f"{dev.token}:",
            "-X",
            "POST",
            "-T",
            str(doc),
            f"{dev.base}/v2/nfse?ref=curlT",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert json.loads(out.stdout)["status"] == "processando_autorizacao", out.stdout
    assert dev.wait_status("curlT", {"autorizado"})["status"] == "autorizado"


def test_prefeitura_refusal_then_ref_reuse(dev: Dev) -> None:
    doc = with_valid_cnpjs(JSON_EXAMPLE)
    doc["prestador"]["codigo_municipio"] = "5300108"  # the sandbox's Brasília demands the regime
    with dev.client() as c:
        assert c.post("/v2/nfse", params={"ref": "e145"}, json=doc).status_code == 202
        busy = c.post("/v2/nfse", params={"ref": "e145"}, json=doc)
        note = dev.wait_status("e145", {"erro_autorizacao"})
        assert [e["codigo"] for e in note["erros"]] == ["E145"]
        doc["regime_especial_tributacao"] = "6"
        assert c.post("/v2/nfse", params={"ref": "e145"}, json=doc).status_code == 202
    if busy.status_code == 422:  # the first one may already have been refused
        assert busy.json()["codigo"] == "em_processamento"
    assert dev.wait_status("e145", {"autorizado"})["status"] == "autorizado"


def test_company_not_enabled(dev: Dev) -> None:
    doc = with_valid_cnpjs(JSON_EXAMPLE)
    doc["prestador"]["cnpj"] = "22769530000131"  # valid, but not the demo tenant's
    with dev.client() as c:
        r = c.post("/v2/nfse", params={"ref": "other"}, json=doc)
    assert r.status_code == 400 and r.json()["codigo"] == "empresa_nao_habilitada"


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    d = Dev(tmp_path)
    try:
        children = [
            int(pid)
            for pid in subprocess.run(
                ["pgrep", "-P", str(d.process.pid)], capture_output=True, text=True
            ).stdout.split()
        ]
        assert len(children) == 9, children  # broker, 3 sandboxes, 4 consumers, ingress
    finally:
        code = d.stop()
    assert code == 0
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "stopped." in d.out.read_text()
