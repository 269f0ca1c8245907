"""Provider accounts end to end (issue 15), the production processes over HTTP: two tenants'
companies, each with its own provider account created by `notaflow account create`, served by
one notaflow. NFC-e: each shop's note goes to its own Emites-Client (the access key carries
the CNPJ of the Emites that issued it). NFS-e: each note reaches the Focus sandbox with its
company's token. A disabled account is refused at the door; secrets appear in no log."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from notaflow.account_keys import new_key
from notaflow.launch.broker import EmbeddedBroker, free_port, port_open
from notaflow.settings import Settings
from testkit.nfce_documents import valid_nfce
from testkit.processes import NOTAFLOW, ROOT
from testkit.stack import Stack
from testkit.waiting import wait_for, wait_http

A, B = "51916585000125", "07504505000132"  # acme's shop (global Emites), beta's shop
TOKEN_A = "focus-token-acme-" + uuid.uuid4().hex
TOKEN_B = "focus-token-beta-" + uuid.uuid4().hex

pytestmark = pytest.mark.slow


class Companies:
    def __init__(self, stack: Stack, tokens: dict[str, str], database: Path) -> None:
        self.stack = stack
        self.tokens = tokens  # tenant -> its notaflow API token
        self.database = database

    def client(self, tenant: str) -> httpx.Client:
        return httpx.Client(base_url=self.stack.base, auth=(self.tokens[tenant], ""), timeout=15)

    def account(self, *args: str, stdin: str = "") -> str:
        out = subprocess.run(
            [*NOTAFLOW, "account", *args],
            env={**os.environ, **self.stack.env},
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout


@pytest.fixture(scope="module")
def companies(
    broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Companies]:
    tmp = tmp_path_factory.mktemp("accounts")
    emites_a, emites_b = free_port(), free_port()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"a{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=f"sqlite:///{tmp / 'accounts.db'}",
        consumer_retry_base=0.2,
        consumer_retry_max=0.5,
        consumer_max_attempts=5,
        emites_host="127.0.0.1",
        emites_port=emites_a,
        emites_cnpj=A,
        emites_timeout=5.0,
        nfce_wait=8.0,
        account_keys=new_key(),
        account_cache_ttl=0.5,
        otel_dir=str(tmp / "spans"),  # every process writes its spans here
    )
    stack = Stack(settings, tmp, consumers=("emission", "cancellation"))
    for port, cnpj in ((emites_a, A), (emites_b, B)):
        stack.spawn(["sandbox", "emites", "--port", str(port), "--cnpj", cnpj], f"emites-{cnpj}")
    sandbox = stack.spawn(
        ["sandbox", "focus", "--port", str(stack.sandbox_port), "--delay", "0.2",
         "--token", "sandbox-token", "--token", TOKEN_A, "--token", TOKEN_B],
        "sandbox",
    )  # fmt: skip
    try:
        wait_for(lambda: port_open("127.0.0.1", emites_a) and port_open("127.0.0.1", emites_b), 15)
        stack.run("migrate")
        tokens = {
            "acme": stack.run("tenant", "create", "acme", f"--cnpj={A}").splitlines()[-1],
            "beta": stack.run("tenant", "create", "beta", f"--cnpj={B}").splitlines()[-1],
        }
        world = Companies(stack, tokens, tmp / "accounts.db")
        world.account("create", "acme", A, "focus", "--environment", "homologacao",
                      "--secret-file", "-", stdin=TOKEN_A)  # fmt: skip
        world.account("create", "beta", B, "focus", "--environment", "homologacao",
                      "--secret-file", "-", stdin=TOKEN_B)  # fmt: skip
        world.account("create", "beta", B, "emites", "--host", "127.0.0.1",
                      "--port", str(emites_b), "--timeout", "5")  # fmt: skip
        wait_http(f"{stack.sandbox}/_sandbox/stats", proc=sandbox.process)
        for name in stack.consumers:
            stack.spawn(["consume", name], f"consumer-{name}")
        ingress = stack.spawn(["ingress"], "ingress")
        wait_http(f"{stack.base}/readyz", proc=ingress.process)
        yield world
    finally:
        stack.stop()
    # No secret in any process's output, nor in any span.
    spans = [f for f in (tmp / "spans").rglob("*") if f.is_file()]
    assert spans, "no process wrote its spans"
    written = "".join(p.output() for p in stack.procs) + "".join(f.read_text() for f in spans)
    assert TOKEN_A not in written and TOKEN_B not in written


def nfse(cnpj: str) -> dict[str, Any]:
    return {
        "data_emissao": "2026-05-27T10:00:00-03:00",
        "prestador": {"cnpj": cnpj, "inscricao_municipal": "12345", "codigo_municipio": "4106902"},
        "tomador": {"cnpj": "11222333000181", "razao_social": "Cliente"},
        "servico": {
            "aliquota": 3,
            "discriminacao": "Consultoria",
            "iss_retido": "false",
            "item_lista_servico": "0107",
            "valor_servicos": "1.00",
        },
    }


def test_each_shop_emits_through_its_own_emites_client(companies: Companies) -> None:
    with companies.client("acme") as acme, companies.client("beta") as beta:
        a = acme.post("/v2/nfce", params={"ref": "na1"}, json=valid_nfce())
        assert a.status_code == 201, a.text
        b = beta.post("/v2/nfce", params={"ref": "nb1"}, json={**valid_nfce(), "cnpj_emitente": B})
        assert b.status_code == 201, b.text
        # The access key names the issuer's CNPJ (positions 7-20): each Emites issued its own.
        assert (a.json()["cnpj_emitente"], a.json()["chave_nfe"][6:20]) == (A, A)
        assert (b.json()["cnpj_emitente"], b.json()["chave_nfe"][6:20]) == (B, B)
        # A shop with neither an account nor the global endpoint, or someone else's shop.
        other = acme.post(
            "/v2/nfce", params={"ref": "na2"}, json={**valid_nfce(), "cnpj_emitente": B}
        )
        assert (other.status_code, other.json()["codigo"]) == (400, "empresa_nao_habilitada")
        bad = beta.post(
            "/v2/nfce", params={"ref": "nb2"}, json={**valid_nfce(), "cnpj_emitente": 1}
        )
        assert (bad.status_code, bad.json()["codigo"]) == (400, "requisicao_invalida")
        # Cancelled through the Emites that issued it.
        cancelled = beta.request(
            "DELETE", "/v2/nfce/nb1", json={"justificativa": "Cliente desistiu da compra"}
        )
        assert (cancelled.status_code, cancelled.json()["status"]) == (200, "cancelado")


def test_no_secret_in_metrics_or_listings(companies: Companies) -> None:
    metrics = httpx.get(f"{companies.stack.base}/metrics").text
    listed = companies.account("list")
    assert '"has_secret": true' in listed
    for text in (metrics, listed):
        assert TOKEN_A not in text and TOKEN_B not in text


def test_disabled_account_is_refused_at_the_door(companies: Companies) -> None:
    companies.account("disable", "beta", B, "emites")
    try:
        with companies.client("beta") as beta:

            def refused() -> httpx.Response | None:
                r = beta.post(
                    "/v2/nfce", params={"ref": "nb3"}, json={**valid_nfce(), "cnpj_emitente": B}
                )
                return r if r.status_code == 403 else None

            answer = wait_for(refused, 10, 0.3)
            assert answer.json()["codigo"] == "conta_desabilitada"
    finally:
        companies.account("enable", "beta", B, "emites")


def test_each_company_reaches_focus_with_its_own_token(companies: Companies) -> None:
    with companies.client("acme") as acme, companies.client("beta") as beta:
        assert acme.post("/v2/nfse", params={"ref": "fa1"}, json=nfse(A)).status_code == 202
        assert beta.post("/v2/nfse", params={"ref": "fb1"}, json=nfse(B)).status_code == 202

    def seen() -> dict[str, str] | None:
        # The sandbox knows notes by our provider ref (N<id>A<attempt>); the database says
        # which client ref each one is.
        with sqlite3.connect(companies.database) as db:
            refs = dict(db.execute("SELECT provider_ref, ref FROM documents WHERE kind='nfse'"))
        requests = httpx.get(f"{companies.stack.sandbox}/_sandbox/requests").json()
        tokens = {refs[r["ref"]]: r["token"] for r in requests if r["ref"] in refs}
        return tokens if len(tokens) == 2 else None

    assert wait_for(seen, 20, 0.2) == {"fa1": TOKEN_A, "fb1": TOKEN_B}
