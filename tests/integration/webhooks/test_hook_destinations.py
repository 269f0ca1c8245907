"""Issue 19, item 6: hook destinations are checked when the hook is created, with the policy the
deliveries apply (`notaflow.destinations`), and https deliveries are pinned to the checked
address with the name kept for SNI and the certificate check."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from notaflow import topics as t
from notaflow.bus import Bus
from notaflow.consumers.providers.webhooks import HookTarget, WebhookSender
from notaflow.ingress.app import create_app
from notaflow.ingress.auth import TenantCache
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.intake import Intake
from notaflow.keepalive import KeepAliveTransport
from notaflow.replies import ReplyWaiters
from notaflow.settings import Settings
from notaflow.store import DocumentStore, HookStore, TenantStore, create_engine, migrate
from testkit.certificates import self_signed

CNPJ = "51916585000125"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The ingress app on its real store, with the default policy (no private destinations)."""
    database_url = f"sqlite:///{tmp_path / 'hooks.db'}"
    engine = create_engine(database_url)
    await migrate(engine)
    tenants = TenantStore(engine)
    token = await tenants.create("acme", "ACME", [CNPJ])
    settings = Settings(database_url=database_url)
    assert settings.hooks_allow_private is False
    bus = Bus(settings)  # never started: nothing here publishes
    topics = t.Topics(settings.kafka_topic_prefix)
    documents = DocumentStore(engine)
    deps = IngressDeps(
        settings=settings, engine=engine, bus=bus, documents=documents,
        intake=Intake(documents, bus, topics.nfse_commands, topics.lifecycle),
        nfce_intake=Intake(documents, bus, topics.nfce_commands, topics.lifecycle),
        tenants=tenants, tenant_cache=TenantCache(tenants), topics=topics,
        hooks=HookStore(engine), waiters=ReplyWaiters(),
    )  # fmt: skip
    transport = httpx.ASGITransport(app=create_app(deps, manage_resources=False))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", auth=(token, "")
    ) as client:
        yield client
    documents.close()
    await engine.dispose()


REFUSED: list[dict[str, Any]] = [
    {"url": "http://127.0.0.1:9/h"},
    {"url": "http://localhost:9/h"},  # a name that resolves to loopback
    {"url": "http://10.0.0.5/h"},
    {"url": "http://169.254.169.254/latest/meta-data/"},  # cloud metadata
    {"url": "http://[::ffff:127.0.0.1]/h"},
    {"url": "http://[::1]/h"},
    {"url": "http://0.0.0.0/h"},
    {"url": "https://93.184.216.34/h\r\nX-Injected: 1"},
    {"url": "https://93.184.216.34/h", "authorization": "Bearer x\r\nX-Injected: 1"},
    {"url": "https://93.184.216.34/h", "authorization": "x", "authorization_header": "Host"},
    # no receiver could read it back (an HTTP header has no agreed encoding beyond ASCII)
    {"url": "https://93.184.216.34/h", "authorization": "Bearer çã"},
]


@pytest.mark.parametrize("fields", REFUSED)
async def test_private_and_malformed_destinations_refused_at_creation(
    api: httpx.AsyncClient, fields: dict[str, Any]
) -> None:
    answer = await api.post("/v2/hooks", json={"event": "nfse", "cnpj": CNPJ, **fields})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["codigo"] == "requisicao_invalida"
    assert body["mensagem"].startswith("URL inválida")
    assert (await api.get("/v2/hooks")).json() == []


async def test_a_non_ascii_authorization_is_named_as_such(api: httpx.AsyncClient) -> None:
    answer = await api.post(
        "/v2/hooks",
        json={"event": "nfse", "cnpj": CNPJ, "url": "https://93.184.216.34/h",
              "authorization": "Token São"},
    )  # fmt: skip
    assert answer.status_code == 400
    assert "apenas caracteres ASCII" in answer.json()["mensagem"]


async def test_public_destinations_and_names_not_resolving_now_are_accepted(
    api: httpx.AsyncClient,
) -> None:
    for url in ("https://93.184.216.34/h", "http://hooks.invalid/h"):
        answer = await api.post("/v2/hooks", json={"event": "nfse", "cnpj": CNPJ, "url": url})
        assert answer.status_code == 200, answer.text
    assert len((await api.get("/v2/hooks")).json()) == 2


# -- https pinned to the checked address ----------------------------------------------------


class TlsReceiver:
    """An https endpoint on 127.0.0.1 presenting a certificate for `name` only."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.cert, key = self_signed(name, tmp, ca=True)
        self.hosts: list[str] = []
        app = Starlette(routes=[Route("/hook", self.endpoint, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
            ssl_certfile=str(self.cert), ssl_keyfile=str(key),
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def endpoint(self, request: Request) -> Response:
        self.hosts.append(request.headers["host"])
        return Response(status_code=204)

    def __enter__(self) -> TlsReceiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "TLS receiver did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[TlsReceiver]:
    with TlsReceiver("hooks.test", tmp_path) as r:
        yield r


async def test_https_delivery_goes_to_the_checked_address_with_the_name_for_tls(
    receiver: TlsReceiver,
) -> None:
    """The name resolves once (to the receiver's loopback address; private allowed here, as in
    `notaflow dev`), the connection goes to that address, and TLS is verified against the
    name: a delivery succeeds only if the certificate is for the name the client registered."""
    trust = ssl.create_default_context(cafile=str(receiver.cert))
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        lookups.append(host)
        return {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}[host]

    transport = KeepAliveTransport(trust)
    async with WebhookSender(transport, allow_private=True, resolver=resolver) as sender:
        ok = await sender.deliver(
            HookTarget(url=f"https://hooks.test:{receiver.port}/hook", signing_secret=SECRET),
            {"ref": "r"}, "m1", int(time.time()),
        )  # fmt: skip
        # Same address, another name: the certificate is not for it, so nothing is delivered
        # (an unpinned or unverified client would have posted it).
        wrong = await sender.deliver(
            HookTarget(url=f"https://other.test:{receiver.port}/hook", signing_secret=SECRET),
            {"ref": "r"}, "m2", int(time.time()),
        )  # fmt: skip
    assert ok.ok, ok
    assert not wrong.ok and wrong.error and "CERTIFICATE_VERIFY_FAILED" in wrong.error, wrong
    assert receiver.hosts == [f"hooks.test:{receiver.port}"]
    assert lookups == ["hooks.test", "other.test"]  # one resolution per delivery
    await transport.aclose()
    await asyncio.sleep(0)
