"""The production processes as Kubernetes runs them: configuration refused in one line (exit
2), the ops port split, uvicorn's own lines in JSON, `notaflow probe` (the chart's helm test),
`--version`, and operator verbs that leave the schema to `notaflow migrate`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from notaflow.launch.broker import free_port
from testkit.processes import NOTAFLOW, ROOT, Proc
from testkit.waiting import wait_http


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NOTAFLOW_")}
    return subprocess.run(
        [*NOTAFLOW, *args],
        env={**clean, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    from importlib.metadata import version

    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"notaflow {version('notaflow')}"


@pytest.mark.parametrize(
    ("command", "env", "says"),
    [
        (["ingress"], {"NOTAFLOW_LOG_FORMAT": "jsn"}, "NOTAFLOW_LOG_FORMAT='jsn' is not one of"),
        (
            ["consume", "emission"],
            # What Kubernetes injects for a Service named <release>-emites with service links on.
            {"NOTAFLOW_EMITES_PORT": "tcp://10.0.0.1:9000"},
            "enableServiceLinks: false",
        ),
        (["migrate"], {"NOTAFLOW_KAFKA_BOOTSTRAPS": "k:9092"}, "NOTAFLOW_KAFKA_BOOTSTRAP?"),
        (["ingress"], {"NOTAFLOW_FOCUS_TOKEN_FILE": "/nonexistent"}, "cannot be read"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    command: list[str], env: dict[str, str], says: str
) -> None:
    out = run(*command, env=env)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("notaflow: configuration error: ")
    assert says in line


def test_operator_verbs_do_not_migrate_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "fresh.db"
    env = {"NOTAFLOW_DATABASE_URL": f"sqlite:///{db}"}
    out = run("tenant", "create", "acme", "--cnpj", "51916585000125", env=env)
    assert out.returncode == 2, out.stderr
    assert "run `notaflow migrate` first" in out.stderr
    assert "Traceback" not in out.stderr
    for verb in (["billing-app", "acme"], ["billing-policy", "acme", "--steps", "3"]):
        assert run(*verb, env=env).returncode == 2
    tables = sqlite3.connect(db).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []
    assert run("migrate", "--schema-only", env=env).returncode == 0
    out = run("tenant", "create", "acme", "--cnpj", "51916585000125", env=env)
    assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def ingress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Proc]]:
    tmp = tmp_path_factory.mktemp("ops")
    db = f"sqlite:///{tmp / 'ops.db'}"
    assert run("migrate", "--schema-only", env={"NOTAFLOW_DATABASE_URL": db}).returncode == 0
    port, ops = free_port(), free_port()
    env = {
        "NOTAFLOW_DATABASE_URL": db,
        "NOTAFLOW_PORT": str(port),
        "NOTAFLOW_OPS_PORT": str(ops),
        "NOTAFLOW_PUBLIC_DOCS": "false",
        # Nothing listens there: the ingress comes up anyway and reports not ready.
        "NOTAFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "NOTAFLOW_LOG_FORMAT": "json",
    }
    proc = Proc(["ingress"], env, tmp, "ingress")
    public, private = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops}"
    try:
        wait_http(f"{private}/healthz", proc=proc.process)
        yield public, private, proc
    finally:
        proc.stop()


def test_ops_routes_answer_only_on_the_ops_port(ingress: tuple[str, str, Proc]) -> None:
    public, ops, _ = ingress
    for path in ("/healthz", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{ops}{path}").status_code == 200, path
        answer = httpx.get(f"{public}{path}")
        assert answer.status_code == 404, path
        assert answer.json()  # the app's own 404 body, not a bare server error
    assert httpx.get(f"{ops}/readyz").status_code == 503  # no broker
    metrics = httpx.get(f"{ops}/metrics").text
    assert "notaflow_build_info{" in metrics
    assert "process_resident_memory_bytes" in metrics
    # The API is on the public port only (401: routed, and asks for credentials).
    assert httpx.post(f"{public}/v2/nfse?ref=x", json={}).status_code == 401
    assert httpx.post(f"{ops}/v2/nfse?ref=x", json={}).status_code == 404
    assert httpx.get(f"{ops}/v2/nfse/x").status_code == 404


def test_probe_is_the_helm_test(ingress: tuple[str, str, Proc]) -> None:
    _, ops, _ = ingress
    assert run("probe", f"{ops}/healthz").returncode == 0
    assert run("probe", f"{ops}/readyz").returncode == 1  # 503
    assert run("probe", f"http://127.0.0.1:{free_port()}/", "--timeout", "2").returncode == 1


def test_uvicorns_own_lines_are_json(ingress: tuple[str, str, Proc]) -> None:
    _, _, proc = ingress
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line, uvicorn's included
    assert any(r.get("logger", "").startswith("uvicorn") for r in records), records[:5]


class Collector:
    """An OTLP/HTTP endpoint on a real socket that keeps what it is sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        received: list[tuple[str, bytes]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"] or 0))
                received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_standard_otel_variables_export_semantic_spans(tmp_path: Path) -> None:
    collector = Collector()
    db = f"sqlite:///{tmp_path / 'otel.db'}"
    assert run("migrate", "--schema-only", env={"NOTAFLOW_DATABASE_URL": db}).returncode == 0
    port = free_port()
    env = {
        "NOTAFLOW_DATABASE_URL": db,
        "NOTAFLOW_PORT": str(port),
        "NOTAFLOW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        # OpenTelemetry's own variables, nothing notaflow-specific.
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "fiscal-ingress",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=staging",
    }
    proc = Proc(["ingress"], env, tmp_path, "ingress")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc.process)
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        headers = {"traceparent": traceparent, "tracestate": "vendor=x"}
        httpx.get(f"http://127.0.0.1:{port}/healthz", headers=headers)
    finally:
        # uvicorn ends by re-raising SIGTERM; the batch exporter has flushed before that.
        assert proc.stop() in (0, -15)
        collector.stop()
    paths = {path for path, _ in collector.received}
    assert paths == {"/v1/traces"}
    body = b"".join(b for _, b in collector.received)
    assert b"fiscal-ingress" in body and b"staging" in body
    assert b"GET /healthz" in body and b"http.request.method" in body and b"http.route" in body
    assert bytes.fromhex("0af7651916cd43dd8448eb211c80319c") in body  # the client's trace id
    assert b"vendor=x" in body  # tracestate kept
