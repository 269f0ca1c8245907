"""The hot routes (`ingress.app.HotRoute`: POST /v2/nfse and Focus's callback as raw ASGI
handlers) answer exactly what their Starlette routes answer: status, headers, body, logs,
request metrics and the exception handed to the server, for accepted and refused requests
alike."""

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
    provider_events = "provider-events"


class Documents:
    """The callback's lookup of the note by Focus's ref."""

    mode: str | None = None

    async def by_provider_ref(self, ref: str) -> Any:
        if self.mode == "db_locked":
            raise sqlite3.OperationalError("database is locked")
        if ref == "known":
            return Document(tenant_id="acme", kind="nfse", ref="abc1")
        return None


class Document:
    def __init__(self, tenant_id: str, kind: str, ref: str) -> None:
        self.tenant_id, self.kind, self.ref = tenant_id, kind, ref


class Bus:
    def __init__(self) -> None:
        self.mode: str | None = None
        self.published: list[Any] = []  # what identifies an event, less its id and time

    async def publish(self, topic: str, event: Any, key: bytes) -> None:
        if self.mode == "bus_down":
            raise BusUnavailable("down")
        if self.mode == "boom":
            raise RuntimeError("boom")
        self.published.append(
            (topic, key, event.type, event.source, event.data, event.subject, event.tenant,
             event.trace())
        )  # fmt: skip


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
    credential: bytes = b"authorization",
) -> list[tuple[bytes, bytes]]:
    out = [(b"host", b"test")]
    if auth is not None:
        out.append((credential, auth))
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
Case = tuple[str, bytes, list[bytes] | None, list[tuple[bytes, bytes]], str | None]
CASES: list[Case] = [
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


async def answers(
    hot: bool, path: str = "/v2/nfse", cases: list[Case] | None = None
) -> tuple[list[Any], list[str]]:
    cases = CASES if cases is None else cases
    intake, documents, bus = Intake(), Documents(), Bus()
    settings = Settings(
        max_body_bytes=2000, focus_webhook_secret=SECRET, focus_webhook_header="X-Focus-Key"
    )
    deps = IngressDeps(
        settings=settings, engine=None, bus=bus, documents=documents,  # type: ignore[arg-type]
        intake=intake, nfce_intake=None, tenants=None, tenant_cache=Cache(), topics=Topics(),  # type: ignore[arg-type]
        hooks=None, waiters=None,  # type: ignore[arg-type]
        account_store=object(), operators=object(),  # type: ignore[arg-type]
        accounts=AccountResolver(NoAccounts(), Settings()),
    )  # fmt: skip
    metrics = Metrics(CollectorRegistry())
    app = create_app(deps, manage_resources=False, metrics=metrics)
    assert path in app.hot  # type: ignore[attr-defined]
    if not hot:
        app.hot = {}  # type: ignore[attr-defined]
    capture = Capture()
    root = logging.getLogger()
    root.addHandler(capture)
    out: list[Any] = []
    try:
        for _name, query, chunks, hdrs, mode in cases:
            intake.mode = documents.mode = bus.mode = mode
            capture.records.clear()
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555), "scheme": "http",
                "method": "POST", "root_path": "", "path": path, "raw_path": path.encode(),
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
            out.append((sent, error, list(capture.records), list(bus.published)))
            bus.published.clear()
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
        sent, error, _, _ = by_name[name]
        assert (sent[0]["status"], error is not None) == (status, handed_on), name
    # Issue 19: a client that goes away mid-body is neither a 500 nor a logged error.
    sent, error, logged, _ = by_name["client disconnects"]
    assert (sent[0]["status"], error, logged) == (499, None, [])
    statuses = [sent[0]["status"] if sent else None for sent, _, _, _ in fast]
    assert statuses.count(202) == 8 and 500 in statuses and 503 in statuses


SECRET = "s3cret"
CALLBACK = json.dumps(
    {"cnpj_prestador": "51916585000125", "ref": "known", "status": "autorizado",
     "numero": "233", "codigo_verificacao": "AB12", "caminho_xml_nota_fiscal": "/a/x.xml"}
).encode()  # fmt: skip


def callback_headers(
    *extra: tuple[bytes, bytes],
    body: bytes = CALLBACK,
    key: bytes | None = SECRET.encode(),
    ctype: bytes | None = b"application/json",
) -> list[tuple[bytes, bytes]]:
    """`headers` for a callback: the key in the configured header (`X-Focus-Key` here)."""
    return headers(*extra, body=body, auth=key, ctype=ctype, credential=b"x-focus-key")


UNKNOWN = CALLBACK.replace(b'"known"', b'"other"')
NOT_FOCUS = b'{"ref": 1}'
CALLBACK_CASES: list[Case] = [
    ("accepted", b"", [CALLBACK], callback_headers(), None),
    ("unknown note", b"", [UNKNOWN], callback_headers(body=UNKNOWN), None),
    ("traceparent", b"", [CALLBACK], callback_headers((b"traceparent", TRACE)), None),
    ("no key", b"", [CALLBACK], callback_headers(key=None), None),
    ("wrong key", b"", [CALLBACK], callback_headers(key=b"nope"), None),
    ("key in authorization", b"", [CALLBACK],
     [(b"authorization", SECRET.encode()), *callback_headers(key=None)], None),
    ("first key wins", b"", [CALLBACK], callback_headers((b"x-focus-key", b"nope")), None),
    ("first key refused", b"", [CALLBACK],
     [(b"x-focus-key", b"nope"), *callback_headers()], None),
    ("not json", b"", [b"{x"], callback_headers(body=b"{x"), None),
    ("xml", b"", [CALLBACK], callback_headers(ctype=b"application/xml"), None),
    ("not focus's", b"", [NOT_FOCUS], callback_headers(body=NOT_FOCUS), None),
    ("too large", b"", [b"x" * 2001], callback_headers(body=b"x" * 2001), None),
    ("bus down", b"", [CALLBACK], callback_headers(), "bus_down"),
    ("unexpected error", b"", [CALLBACK], callback_headers(), "boom"),
    ("database locked", b"", [CALLBACK], callback_headers(), "db_locked"),
    ("client disconnects", b"", None, callback_headers(), None),
]  # fmt: skip


async def test_the_callback_hot_route_answers_as_the_starlette_route() -> None:
    path = "/webhooks/focus/nfse"
    slow, slow_series = await answers(False, path, CALLBACK_CASES)
    fast, fast_series = await answers(True, path, CALLBACK_CASES)
    for (name, *_), expected, got in zip(CALLBACK_CASES, slow, fast, strict=True):
        assert got == expected, name
    assert fast_series == slow_series
    statuses = {
        case[0]: sent[0]["status"] if sent else None
        for case, (sent, _, _, _) in zip(CALLBACK_CASES, fast, strict=True)
    }
    published = {case[0]: events for case, (*_, events) in zip(CALLBACK_CASES, fast, strict=True)}
    [(topic, key, *_, trace)] = published["traceparent"]
    assert (topic, key) == ("provider-events", b"acme:nfse:abc1")
    assert trace["traceparent"] == TRACE.decode()
    assert published["unknown note"][0][1] == b"provider:other"
    assert not published["wrong key"] and not published["not focus's"]
    assert statuses == {
        "accepted": 200, "unknown note": 200, "traceparent": 200, "no key": 401,
        "wrong key": 401, "key in authorization": 401, "first key wins": 200,
        "first key refused": 401, "not json": 400, "xml": 415, "not focus's": 400,
        "too large": 413, "bus down": 503, "unexpected error": 500, "database locked": 503,
        "client disconnects": 499,
    }  # fmt: skip
