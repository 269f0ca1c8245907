"""The hot route (`ingress.app.HotRoute`, POST /v2/nfse as a raw ASGI handler) answers exactly
what the Starlette route answers: status, headers, body, logs, request metrics and the
exception handed to the server, for accepted and refused requests alike."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from notaflow.accounts import Account, AccountResolver, Provider
from notaflow.errors import BusUnavailable, RefInUse
from notaflow.ingress.app import create_app
from notaflow.ingress.deps import IngressDeps
from notaflow.metrics import Metrics
from notaflow.settings import Settings
from notaflow.store import Tenant
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs

TENANT = Tenant(id="acme", name="ACME", cnpjs=frozenset({"51916585000125"}))
AUTH = b"Basic " + base64.b64encode(b"tok:")
GOOD = json.dumps(with_valid_cnpjs(JSON_EXAMPLE), ensure_ascii=False).encode()
OTHER = with_valid_cnpjs(JSON_EXAMPLE)
OTHER["prestador"]["cnpj"] = "07504505000132"


class Cache:
    async def lookup(self, token: str) -> Tenant | None:
        return TENANT if token == "tok" else None


class Intake:
    mode: str | None = None

    async def submit(self, claim: Any, event: Any, key: bytes) -> None:
        if self.mode == "in_use":
            raise RefInUse(claim.ref, "processando_autorizacao")
        if self.mode == "authorized":
            raise RefInUse(claim.ref, "autorizado")
        if self.mode == "bus_down":
            raise BusUnavailable("down")
        if self.mode == "boom":
            raise RuntimeError("boom")
        if self.mode == "db_locked":  # the database's state: 503, not handed to the server
            raise sqlite3.OperationalError("database is locked")
        if self.mode == "db_bug":  # the statement's fault: 500, not handed to the server
            raise sqlite3.OperationalError("no such table: documents")


class Topics:
    nfse_commands = "commands"


class NoAccounts:
    """No provider accounts: every company uses the global settings."""

    async def get(self, tenant: str, cnpj: str, provider: Provider) -> Account | None:
        return None


def headers(
    *extra: tuple[bytes, bytes],
    body: bytes = GOOD,
    auth: bytes | None = AUTH,
    ctype: bytes | None = b"application/json",
    length: bool = True,
) -> list[tuple[bytes, bytes]]:
    out = [(b"host", b"test")]
    if auth is not None:
        out.append((b"authorization", auth))
    if ctype is not None:
        out.append((b"content-type", ctype))
    if length:
        out.append((b"content-length", str(len(body)).encode()))
    return [*out, *extra]


def token(name: str) -> bytes:
    return b"Basic " + base64.b64encode(name.encode() + b":")


Q, A = b"ref=abc1", [GOOD]
TRACE = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
BIG = [b"{" + b" " * 1500, b" " * 1500 + b"}"]
ODD_LENGTH = [*headers(length=False), (b"content-length", "²".encode())]
FORM = b"application/x-www-form-urlencoded"

# (name, query, body chunks (None: the client disconnects), headers, intake mode)
CASES: list[tuple[str, bytes, list[bytes] | None, list[tuple[bytes, bytes]], str | None]] = [
    ("accepted", Q, A, headers(), None),
    ("traceparent", Q, A, headers((b"traceparent", TRACE)), None),
    ("no credentials", Q, A, headers(auth=None), None),
    ("bearer", Q, A, headers(auth=b"Bearer tok"), None),
    ("bad base64", Q, A, headers(auth=b"Basic !!!"), None),
    ("unknown token", Q, A, headers(auth=token("nope")), None),
    ("first authorization wins", Q, A, headers((b"authorization", token("nope"))), None),
    ("first authorization refused", Q, A, [(b"authorization", token("nope")), *headers()], None),
    ("no ref", b"", A, headers(), None),
    ("empty ref", b"ref=", A, headers(), None),
    ("bad ref", b"ref=a-b", A, headers(), None),
    ("long ref", b"ref=" + b"a" * 51, A, headers(), None),
    ("first ref wins", b"ref=abc&ref=def", A, headers(), None),
    ("escaped ref", b"x=1&ref=ab%2Bc", A, headers(), None),
    ("nul in query", b"ref=a%00b", A, headers(), None),
    ("xml", Q, A, headers(ctype=b"application/xml"), None),
    ("multipart", Q, A, headers(ctype=b"Multipart/form-data"), None),
    ("form-urlencoded", Q, A, headers(ctype=FORM), None),
    ("no content type", Q, A, headers(ctype=None), None),
    ("empty body", Q, [b""], headers(body=b""), None),
    ("blank body", Q, [b"  "], headers(body=b"  "), None),
    ("not json", Q, [b"{x"], headers(body=b"{x"), None),
    ("array", Q, [b"[1]"], headers(body=b"[1]"), None),
    ("declared too large", Q, [b"x" * 2001], headers(body=b"x" * 2001), None),
    ("streamed too large", Q, BIG, headers(length=False), None),
    ("streamed", Q, [GOOD[:100], GOOD[100:]], headers(length=False), None),
    ("odd content-length", Q, A, ODD_LENGTH, None),
    ("schema", Q, [b'{"prestador": {}}'], headers(body=b'{"prestador": {}}'), None),
    ("company not enabled", Q, [json.dumps(OTHER).encode()], headers(length=False), None),
    ("ref in use", Q, A, headers(), "in_use"),
    ("ref authorized", Q, A, headers(), "authorized"),
    ("bus down", Q, A, headers(), "bus_down"),
    ("unexpected error", Q, A, headers(), "boom"),
    ("database locked", Q, A, headers(), "db_locked"),
    ("database bug", Q, A, headers(), "db_bug"),
    ("client disconnects", Q, None, headers(), None),
]


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, str, str, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("aiosqlite"):
            return  # another test's engine closing in its thread, whenever it gets to it
        self.records.append(
            (record.name, record.levelname, record.getMessage(), record.exc_info is not None)
        )


async def answers(hot: bool) -> tuple[list[Any], list[str]]:
    intake = Intake()
    deps = IngressDeps(
        settings=Settings(max_body_bytes=2000), engine=None, bus=None, documents=None,  # type: ignore[arg-type]
        intake=intake, nfce_intake=None, tenants=None, tenant_cache=Cache(), topics=Topics(),  # type: ignore[arg-type]
        hooks=None, waiters=None,  # type: ignore[arg-type]
        account_store=object(), operators=object(),  # type: ignore[arg-type]
        accounts=AccountResolver(NoAccounts(), Settings()),
    )  # fmt: skip
    metrics = Metrics(CollectorRegistry())
    app = create_app(deps, manage_resources=False, metrics=metrics)
    assert app.hot is not None  # type: ignore[attr-defined]
    if not hot:
        app.hot = None  # type: ignore[attr-defined]
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    out: list[Any] = []
    try:
        for _name, query, chunks, hdrs, mode in CASES:
            intake.mode = mode
            capture.records.clear()
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555), "scheme": "http",
                "method": "POST", "root_path": "", "path": "/v2/nfse", "raw_path": b"/v2/nfse",
                "query_string": query, "headers": hdrs, "state": {},
            }  # fmt: skip
            inbox: list[dict[str, Any]] = (
                [{"type": "http.disconnect"}]
                if chunks is None
                else [
                    {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                    for i, c in enumerate(chunks)
                ]
            )
            sent: list[Any] = []

            async def receive(inbox: list[dict[str, Any]] = inbox) -> dict[str, Any]:
                return inbox.pop(0) if inbox else {"type": "http.disconnect"}

            async def send(message: Any, sent: list[Any] = sent) -> None:
                sent.append(message)

            error = None
            try:
                await app(scope, receive, send)
            except Exception as exc:
                error = repr(exc)
            out.append((sent, error, list(capture.records)))
    finally:
        root.removeHandler(capture)
    series = [
        line
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line.startswith(
            ("notaflow_http_requests_total", "notaflow_http_request_duration_seconds_count")
        )
    ]
    return out, series


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


async def test_hot_route_answers_as_the_starlette_route() -> None:
    slow, slow_series = await answers(hot=False)
    fast, fast_series = await answers(hot=True)
    for (name, *_), expected, got in zip(CASES, slow, fast, strict=True):
        assert got == expected, name
    assert fast_series == slow_series
    by_name = {case[0]: answer for case, answer in zip(CASES, fast, strict=True)}
    for name, status, handed_on in [
        ("unexpected error", 500, True),
        ("database locked", 503, False),
        ("database bug", 500, False),
    ]:
        sent, error, _ = by_name[name]
        assert (sent[0]["status"], error is not None) == (status, handed_on), name
    # Issue 19: a client that goes away mid-body is neither a 500 nor a logged error.
    sent, error, logged = by_name["client disconnects"]
    assert (sent[0]["status"], error, logged) == (499, None, [])
    statuses = [sent[0]["status"] if sent else None for sent, _, _ in fast]
    assert statuses.count(202) == 8 and 500 in statuses and 503 in statuses
