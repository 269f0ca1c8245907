"""Issue 19 against the production processes: limits applied before any work (items 3 and 7),
and no secret or personal data in any output after a run full of failures (item 4).

One stack for the module (a stack costs ~10-20 s to start): ingress, emission and notification
consumers, the Focus sandbox, a local SMTP sink and a hook receiver; tracing on (spans written
to a directory, so their attributes are grepped too), tight server limits so the test is fast.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from notaflow.launch.broker import EmbeddedBroker, free_port
from notaflow.settings import Settings
from testkit.processes import Proc
from testkit.receiver import Receiver, ReceiverServer
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack
from testkit.waiting import wait_for, wait_http

HEAD_TIMEOUT = 1.0
MAX_CONCURRENCY = 40


@dataclass
class World:
    stack: Stack
    receiver: Receiver
    tmp: Path
    json_base: str = ""  # a second ingress, logging JSON

    @property
    def host_port(self) -> tuple[str, int]:
        return "127.0.0.1", self.stack.port

    def ingress_pid(self) -> int:
        return next(p.process.pid for p in self.stack.procs if p.name == "ingress")

    def metrics(self) -> str:
        return httpx.get(f"{self.stack.base}/metrics").text


@pytest.fixture(scope="module")
def world(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("security")
    sink = ThreadedSmtpSink(tmp / "outbox").start()
    receiver_server = ReceiverServer()
    receiver = receiver_server.start()
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_topic_prefix=f"s{uuid.uuid4().hex[:8]}.",
        kafka_partitions=3,
        kafka_idempotence=False,
        kafka_session_timeout_ms=6000,
        kafka_heartbeat_ms=300,
        database_url=f"sqlite:///{tmp / 'sec.db'}",
        consumer_retry_base=0.1,
        consumer_retry_max=0.3,
        consumer_max_attempts=3,
        **sink.settings(),
        smtp_sender="nfse@notaflow.test",
        smtp_pause=0.01,
        hooks_allow_private=True,  # the receiver is on loopback
        hooks_retry_schedule="0.2,0.4",
        otel_dir=str(tmp / "spans"),
        ingress_header_timeout=HEAD_TIMEOUT,
        ingress_keep_alive_timeout=HEAD_TIMEOUT,
        ingress_max_concurrency=MAX_CONCURRENCY,
    )
    stack = Stack(settings, tmp, consumers=("emission",)).start()
    # Both log formats in one run: the notification consumer and a second ingress write JSON.
    json_logs = {**stack.env, "NOTAFLOW_LOG_FORMAT": "json"}
    stack.procs.append(Proc(["consume", "notification"], json_logs, tmp, "notification-json"))
    json_port = free_port()
    json_ingress = Proc(
        ["ingress"], {**json_logs, "NOTAFLOW_PORT": str(json_port)}, tmp, "ingress-json"
    )
    stack.procs.append(json_ingress)
    wait_http(f"http://127.0.0.1:{json_port}/readyz", proc=json_ingress.process)
    world = World(stack, receiver, tmp)
    world.json_base = f"http://127.0.0.1:{json_port}"
    yield world
    stack.stop()
    receiver_server.stop()
    sink.stop()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_exchange(address: tuple[str, int], head: bytes, timeout: float = 5.0) -> bytes:
    """Send `head` (as much of it as the server takes) and read until the server closes."""
    with socket.create_connection(address, timeout=timeout) as s:
        # The server may answer and close before taking it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(head)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


# -- item 3: limits before any work -----------------------------------------------------------


def test_oversized_heads_and_credentials_are_refused_without_memory(world: World) -> None:
    address = world.host_port
    pid = world.ingress_pid()
    # Warm up, then measure: 200 requests with 1 MB credentials used to take the ingress from
    # 116 to 389 MB, for good.
    httpx.get(f"{world.stack.base}/healthz")
    before = rss_kib(pid)
    big = b"Basic " + b"A" * 1_000_000
    for _ in range(200):
        answer = raw_exchange(
            address, b"GET /v2/nfse/x HTTP/1.1\r\nHost: t\r\nAuthorization: " + big + b"\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    grown = rss_kib(pid) - before
    assert grown < 20_000, f"ingress RSS grew {grown} KiB"

    # 16 MiB of header: answered and closed as soon as the limit is passed.
    started = time.monotonic()
    huge = raw_exchange(address, b"GET / HTTP/1.1\r\nX-Big: " + b"x" * (16 << 20) + b"\r\n\r\n")
    assert huge.startswith(b"HTTP/1.1 431 ") and time.monotonic() - started < 5

    # A credential over a few hundred bytes is refused in the route's dialect, like an unknown
    # one, and never reaches the database or the caches.
    long_token = "t" * 300
    with httpx.Client(base_url=world.stack.base) as c:
        focus = c.get("/v2/nfse/x", auth=(long_token, ""))
        assert (focus.status_code, focus.json()["codigo"]) == (403, "permissao_negada")
        hubsoft = c.get(
            "/api/v1/integracao/cliente/financeiro",
            params={"busca": "codigo_cliente", "termo_busca": "x"},
            headers={"Authorization": f"Bearer {long_token}"},
        )
        assert hubsoft.status_code in (401, 403) and hubsoft.json()["status"] == "error"
        wuro = c.post(
            "/api/v3.2/invoice/x/mail",
            json={},
            headers={"X-APP-ID": "app", "X-APP-SECRET": long_token},
        )
        assert (wuro.status_code, wuro.json()["error"]["code"]) == (401, "unauthorized")


def read_response(s: socket.socket) -> bytes:
    """One whole response (head and its content-length body): the server may write the head
    and the body in two sends, and a loaded machine lets a recv see only the first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_idle_and_slow_connections_are_closed(world: World) -> None:
    address = world.host_port
    # Nothing sent at all.
    started = time.monotonic()
    with socket.create_connection(address, timeout=10) as s:
        answer = s.recv(1024)
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b""
    assert time.monotonic() - started < HEAD_TIMEOUT + 2
    # A head trickled in (slowloris): one header byte every 0.2 s.
    started = time.monotonic()
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        answer = b""
        for _ in range(50):
            try:
                s.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.2)
        with contextlib.suppress(ConnectionResetError):
            answer = s.recv(1024)
    assert answer.startswith(b"HTTP/1.1 408 ") or answer == b""
    assert time.monotonic() - started < HEAD_TIMEOUT + 3
    # An idle keep-alive connection after a request.
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = read_response(s)
        assert answer.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        assert s.recv(1024) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT + 2


def test_connections_over_the_concurrency_limit_get_503(world: World) -> None:
    address = world.host_port
    held = [socket.create_connection(address) for _ in range(MAX_CONCURRENCY)]
    try:
        time.sleep(0.2)
        over = raw_exchange(
            address, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert over.startswith(b"HTTP/1.1 503 "), over[:100]
    finally:
        for s in held:
            s.close()
    # Once they are gone (closed here, or by the head timeout), requests are served again.
    wait_for(lambda: httpx.get(f"{world.stack.base}/healthz").status_code == 200, 10, 0.1)


# -- item 7: the two 500s ------------------------------------------------------------------


def test_the_two_500s_are_a_clear_4xx_and_a_quiet_disconnect(world: World) -> None:
    with httpx.Client(base_url=world.stack.base) as c:
        answer = c.get(
            "/api/v1/integracao/cliente/financeiro",
            params={"busca": "codigo_cliente", "termo_busca": "x", "limit": "9" * 4301},
            headers={"Authorization": f"Bearer {world.stack.token}"},
        )
    assert answer.status_code == 400
    body = answer.json()
    assert (body["status"], body["msg"]) == (
        "error",
        "O parâmetro limit deve ser um número entre 1 e 50",
    )
    # A client that goes away in the middle of its body, on two routes.
    auth = "Basic " + base64.b64encode(f"{world.stack.token}:".encode()).decode()
    for path in ("/v2/nfse?ref=gone1", "/v2/hooks"):
        with socket.create_connection(world.host_port) as s:
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
                + b'{"a": "'
                + b"x" * 1000
            )
            time.sleep(0.2)
    wait_for(lambda: 'status="499"' in world.metrics(), 10, 0.1)
    metrics = world.metrics()
    assert not re.search(r'http_requests_total\{[^}]*status="500"', metrics), metrics
    ingress = next(p for p in world.stack.procs if p.name == "ingress").output()
    assert "Traceback" not in ingress and "unhandled error" not in ingress, ingress[-3000:]


# -- item 4: no secrets anywhere, after a run full of failures ------------------------------


def test_no_secret_in_any_output_after_a_run_full_of_failures(world: World) -> None:
    stack = world.stack
    mark = uuid.uuid4().hex[:12]
    # No scheme word: "Bearer x" would be masked by the text redaction alone, and this must
    # prove the database parameters are hidden.
    hook_auth = f"chave-do-gatilho-{mark}"
    email = f"segredo.{mark}@cliente.example"
    with stack.client() as c:
        hook = c.post(
            "/v2/hooks",
            json={"event": "nfse", "url": world.receiver.url("/h"), "authorization": hook_auth},
        ).json()
        signing_secret = hook["signing_secret"]
        # Deliveries fail a few times (retried, logged), then succeed.
        world.receiver.fail(2)
        doc = with_valid_cnpjs(JSON_EXAMPLE)
        doc["tomador"]["email"] = email
        assert c.post("/v2/nfse", params={"ref": "sec1"}, json=doc).status_code == 202
        note = stack.wait_status("sec1", {"autorizado"})
        wait_for(lambda: any(s.path == "/h" for s in world.receiver.seen), 20, 0.1)

        # A database error on the statement carrying the secrets: the hook's INSERT fails
        # (SQLAlchemy used to log and dead-letter it with `[parameters: ...]`).
        db = sqlite3.connect(stack.settings.database_url.removeprefix("sqlite:///"))
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON hooks BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        db.commit()
        try:
            for base in (stack.base, world.json_base):  # text and JSON logs
                failed = c.post(
                    f"{base}/v2/hooks",
                    json={
                        "event": "nfse",
                        "url": world.receiver.url("/x"),
                        "authorization": hook_auth,
                    },
                )
                assert failed.status_code >= 500
        finally:
            db.execute("DROP TRIGGER refuse")
            db.commit()
            db.close()

    # Forged callbacks (dead-lettered, refused), with the real secret and with wrong ones.
    secret = {"Authorization": stack.settings.focus_webhook_secret}
    hook_url = f"{stack.base}/webhooks/focus/nfse"
    httpx.post(hook_url, json={"ref": "N999A1", "status": "autorizado"}, headers=secret)
    httpx.post(
        hook_url, json={"ref": "N1A1", "status": "autorizado"}, headers={"Authorization": "x"}
    )
    # Unknown and malformed credentials.
    httpx.get(f"{stack.base}/v2/nfse/sec1", auth=("not-a-token", ""))
    httpx.get(f"{stack.base}/v2/nfse/sec1", headers={"Authorization": "Basic ###"})

    wait_for(lambda: "N999A1" in stack.run("dlq", "list"), 30, 0.5)  # the dead letter is written
    outputs = {
        "dlq list": stack.run("dlq", "list"),
        "focus-hook": stack.run("focus-hook", f"{stack.base}/webhooks/focus/nfse"),
        "history": stack.run("history", "acme", "sec1"),
        "metrics": world.metrics(),
        "spans": "".join(p.read_text() for p in (world.tmp / "spans").glob("*")),
    }
    for proc in stack.procs:
        if proc.name != "sandbox":  # the provider's stand-in, not notaflow
            outputs[proc.name] = proc.output()
    assert outputs["spans"], "tracing wrote nothing: the span check would pass vacuously"
    assert "N999A1" in outputs["dlq list"]
    secrets_used = {
        "tenant token": stack.token,
        "Focus token": "sandbox-token",
        "Focus callback secret": stack.settings.focus_webhook_secret,
        "hook authorization": hook_auth,
        "hook signing secret": signing_secret.removeprefix("whsec_"),
        "customer e-mail": email,
        "XML name": note["caminho_xml_nota_fiscal"].rsplit("/", 1)[-1],
    }
    leaks = [
        f"{what} in {where}"
        for what, value in secrets_used.items()
        for where, text in outputs.items()
        if value in text
    ]
    assert not leaks, leaks
    # The run was what it claims to be: failures logged, not silence.
    for name in ("ingress", "ingress-json"):
        assert "INSERT INTO hooks" in outputs[name], outputs[name][-2000:]
    assert all(
        json.loads(line) for line in outputs["ingress-json"].splitlines() if line.startswith("{")
    )
    assert '"level"' in outputs["notification-json"]
    assert json.loads(outputs["history"])["history"]
