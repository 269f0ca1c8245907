"""The Focus NFe HTTP adapter against `httpx.MockTransport`: what goes on the wire, how every
answer and every foreign error lands in the error tree, and the rate-limit gate."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from notaflow.consumers.providers.focus import FocusClient, FocusReply
from notaflow.consumers.providers.rate_windows import RateWindows
from notaflow.consumers.providers.urls import ForeignPath
from notaflow.errors import (
    Permanent,
    RateLimited,
    Stopping,
    Transient,
    Unsent,
)
from notaflow.metrics import Metrics

BASE = "https://focus.test"
TOKEN = "tok-123"

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> FocusClient:
    return FocusClient(BASE, TOKEN, timeout=5, transport=httpx.MockTransport(handler))


def subclasses(cls: type[Exception]) -> list[type[Exception]]:
    """Every subclass, however deep, in a stable order (test ids)."""
    found: set[type[Exception]] = set()
    todo = [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return sorted(found, key=lambda c: c.__name__)


async def test_basic_auth_is_token_with_empty_password() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "autorizado"})

    focus = client(handler)
    try:
        await focus.get_nfse("r1")
    finally:
        await focus.aclose()
    scheme, _, encoded = seen[0].headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded) == f"{TOKEN}:".encode()


async def test_emit_sends_ref_query_and_json_document() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"ref": "r-1", "status": "processando_autorizacao"})

    document = {"prestador": {"cnpj": "51916585000125"}, "servico": {"valor_servicos": 10.5}}
    focus = client(handler)
    try:
        reply = await focus.emit_nfse("r-1", document)
    finally:
        await focus.aclose()
    assert reply == FocusReply(202, {"ref": "r-1", "status": "processando_autorizacao"})
    request = seen[0]
    assert request.method == "POST"
    assert request.url.path == "/v2/nfse"
    assert request.url.params["ref"] == "r-1"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == document


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_is_transient(status: int) -> None:
    focus = client(lambda r: httpx.Response(status, text="upstream down"))
    try:
        with pytest.raises(Transient) as info:
            await focus.get_nfse("r1")
    finally:
        await focus.aclose()
    assert not isinstance(info.value, RateLimited)
    assert str(status) in str(info.value)


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectTimeout, httpx.ReadTimeout, httpx.PoolTimeout, httpx.ConnectError],
)
async def test_timeouts_and_connection_errors_are_transient(
    exc: type[httpx.RequestError],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    focus = client(handler)
    try:
        with pytest.raises(Transient) as info:
            await focus.emit_nfse("r1", {})
    finally:
        await focus.aclose()
    assert isinstance(info.value.__cause__, exc)


@pytest.mark.parametrize("exc", subclasses(httpx.TransportError))
async def test_every_transport_error_maps_into_the_consumer_tree(
    exc: type[httpx.TransportError],
) -> None:
    """A new httpx error class without a mapping fails here instead of leaking to the runner."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    focus = client(handler)
    try:
        with pytest.raises((Permanent, Transient)) as info:
            await focus.get_nfse("r1")
    finally:
        await focus.aclose()
    assert isinstance(info.value, Transient)
    assert isinstance(info.value.__cause__, exc)


@pytest.mark.parametrize(
    "exc",
    [cls for cls in subclasses(httpx.RequestError) if not issubclass(cls, httpx.TransportError)],
)
async def test_every_request_error_maps_into_the_consumer_tree(
    exc: type[httpx.RequestError],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    focus = client(handler)
    try:
        with pytest.raises((Permanent, Transient)):
            await focus.get_nfse("r1")
    finally:
        await focus.aclose()


async def test_undecodable_body_is_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            content=b"definitely not gzip",
        )

    focus = client(handler)
    try:
        with pytest.raises(Transient):
            await focus.get_nfse("r1")
    finally:
        await focus.aclose()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "0.2"}, 0.2),
        ({"Rate-Limit-Reset": "0.2"}, 0.2),
        ({"Retry-After": "0.2", "Rate-Limit-Reset": "7"}, 0.2),
    ],
)
async def test_429_raises_rate_limited_and_the_gate_holds_the_next_call(
    headers: dict[str, str], expected: float
) -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, headers=headers, json={"codigo": "limite_excedido"})
        return httpx.Response(200, json={"status": "autorizado"})

    focus = client(handler)
    try:
        with pytest.raises(RateLimited) as info:
            await focus.get_nfse("r1")
        assert info.value.retry_after == pytest.approx(expected)
        assert info.value.retriable
        reply = await focus.get_nfse("r1")
    finally:
        await focus.aclose()
    assert reply.status_code == 200
    assert calls[1] - calls[0] >= expected - 0.02


async def test_spent_rate_limit_window_makes_the_next_call_wait() -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(
            200,
            headers={
                "Rate-Limit-Remaining": "0" if len(calls) == 1 else "99",
                "Rate-Limit-Reset": "0.2",
            },
            json={"status": "autorizado"},
        )

    focus = client(handler)
    try:
        first = await focus.get_nfse("r1")  # succeeds: the window is spent only afterwards
        await focus.get_nfse("r1")
        await focus.get_nfse("r1")  # remaining 99 again: no wait
    finally:
        await focus.aclose()
    assert first.status_code == 200
    assert calls[1] - calls[0] >= 0.18
    assert calls[2] - calls[1] < 0.1


async def test_remaining_window_does_not_wait() -> None:
    windows = RateWindows()
    await windows.acquire("t")  # the probe
    windows.observe("t", 200, {"rate-limit-remaining": "5", "rate-limit-reset": "30"})
    await windows.acquire("t")
    windows.observe("t", 200, {"rate-limit-remaining": "bogus", "rate-limit-reset": "30"})
    await windows.acquire("t")
    windows.observe("t", 200, {"rate-limit-remaining": "0"})  # no reset: nothing to wait for
    started = time.monotonic()
    await windows.acquire("t")
    assert time.monotonic() - started < 0.05


@pytest.mark.parametrize("status", [401, 403])
async def test_bad_credentials_are_permanent(status: int) -> None:
    focus = client(lambda r: httpx.Response(status, json={"mensagem": "token inválido"}))
    try:
        with pytest.raises(Permanent, match="token inválido"):
            await focus.emit_nfse("r1", {})
    finally:
        await focus.aclose()


async def test_non_json_success_body_is_transient() -> None:
    focus = client(lambda r: httpx.Response(200, text="<html>gateway</html>"))
    try:
        with pytest.raises(Transient, match="not JSON"):
            await focus.get_nfse("r1")
    finally:
        await focus.aclose()


async def test_422_em_processamento_is_a_reply_not_an_error() -> None:
    body = {"codigo": "em_processamento", "mensagem": "Nota fiscal em processamento"}
    focus = client(lambda r: httpx.Response(422, json=body))
    try:
        reply = await focus.emit_nfse("r1", {})
    finally:
        await focus.aclose()
    assert reply == FocusReply(422, body)


async def test_empty_body_is_an_empty_reply() -> None:
    focus = client(lambda r: httpx.Response(204))
    try:
        reply = await focus.cancel_nfse("r1", "erro de digitação no valor")
    finally:
        await focus.aclose()
    assert reply == FocusReply(204, {})


async def test_register_hook_reuses_an_existing_hook() -> None:
    url = "https://notaflow.test/webhooks/focus/nfse"
    existing = {"id": "h1", "url": url, "event": "nfse", "authorization": "x"}
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.method == "GET", "must not create a duplicate hook"
        return httpx.Response(
            200, json=[{"id": "h0", "url": "https://other", "event": "nfse"}, existing]
        )

    focus = client(handler)
    try:
        reply = await focus.register_hook(url, "secret")
    finally:
        await focus.aclose()
    assert reply == FocusReply(200, existing)
    assert [(r.method, r.url.path) for r in seen] == [("GET", "/v2/hooks")]


async def test_register_hook_creates_when_missing_or_deleted() -> None:
    url = "https://notaflow.test/webhooks/focus/nfse"
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(
                200, json=[{"id": "h1", "url": url, "event": "nfse", "deleted": True}]
            )
        return httpx.Response(201, json={"id": "h2", **json.loads(request.content)})

    focus = client(handler)
    try:
        reply = await focus.register_hook(url, "secret", header="X-Token")
    finally:
        await focus.aclose()
    assert [(r.method, r.url.path) for r in seen] == [("GET", "/v2/hooks"), ("POST", "/v2/hooks")]
    assert json.loads(seen[1].content) == {
        "event": "nfse",
        "url": url,
        "authorization": "secret",
        "authorization_header": "X-Token",
    }
    assert reply.status_code == 201
    assert reply.body["id"] == "h2"


class SlowFocus:
    """A provider that answers after `seconds`, counting the calls it has open at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.open = 0
        self.peak = 0
        self.started = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.started += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.open -= 1
        return httpx.Response(202, json={"status": "processando_autorizacao"})


def limited(provider: SlowFocus, max_in_flight: int) -> FocusClient:
    transport = httpx.MockTransport(provider)
    return FocusClient(BASE, TOKEN, timeout=5, transport=transport, max_in_flight=max_in_flight)


async def test_calls_in_flight_never_exceed_the_limit() -> None:
    provider = SlowFocus(0.02)
    focus = limited(provider, 3)
    try:
        replies = await asyncio.gather(*(focus.emit_nfse(f"r{i}", {}) for i in range(12)))
    finally:
        await focus.aclose()
    assert [r.status_code for r in replies] == [202] * 12
    assert provider.peak == 3


async def test_stop_calls_lets_calls_in_flight_finish_and_starts_no_more() -> None:
    provider = SlowFocus(0.1)
    focus = limited(provider, 2)
    try:
        # A token's first call goes alone (it learns the token's credit window); then the
        # calls run together up to the limit.
        await focus.emit_nfse("first", {})
        provider.started = 0
        calls = [asyncio.ensure_future(focus.emit_nfse(f"r{i}", {})) for i in range(5)]
        while provider.started < 2:  # noqa: ASYNC110 (the provider is a plain counter)
            await asyncio.sleep(0.005)
        focus.stop_calls()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        with pytest.raises(Stopping):
            await focus.emit_nfse("late", {})
    finally:
        await focus.aclose()
    assert provider.started == 2
    assert [getattr(o, "status_code", None) for o in outcomes[:2]] == [202, 202]
    assert all(isinstance(o, Stopping) for o in outcomes[2:])
    # Nothing was sent, so retrying it later cannot repeat a request the provider has.
    assert all(isinstance(o, Unsent) for o in outcomes[2:])


async def test_download_by_path_and_by_url_on_the_focus_host_only() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("missing.xml"):
            return httpx.Response(404, text="não encontrado")
        if request.url.path.endswith("moved.xml"):
            return httpx.Response(302, headers={"Location": "https://s3.test/x.xml"}, text="Moved")
        return httpx.Response(200, content=b"<xml/>", headers={"content-type": "application/xml"})

    focus = client(handler)
    try:
        by_path = await focus.download("/notas_fiscais_servico/N1A1-nfse.xml")
        by_url = await focus.download(f"{BASE}/x/N1A1-nfse.xml")
        with pytest.raises(Transient, match="HTTP 404"):
            await focus.download("/notas_fiscais_servico/missing.xml")
        # A redirect is not followed, and its page is never taken for the XML.
        with pytest.raises(Transient, match="HTTP 302"):
            await focus.download("/notas_fiscais_servico/moved.xml")
        # Issue 19: a path from a callback that names another host is refused before any
        # request is made.
        for foreign in (
            "https://files.focus.test/x/N1A1-nfse.xml",
            "http://127.0.0.1:9/x.xml",
            "//127.0.0.1:9/x.xml",
            "https://user@focus.test/x.xml",
            "notas/x.xml",
            "/x\\@127.0.0.1/x.xml",
            "/x\r\nHost: evil/x.xml",
        ):
            with pytest.raises(ForeignPath):
                await focus.download(foreign)
        # Non-ASCII and `@` stay in the path: the host never changes.
        await focus.download("/notas/\u00e9@127.0.0.1:9/x.xml")
    finally:
        await focus.aclose()
    assert by_path == by_url == b"<xml/>"
    assert str(seen[0].url) == f"{BASE}/notas_fiscais_servico/N1A1-nfse.xml"
    assert str(seen[1].url) == f"{BASE}/x/N1A1-nfse.xml"
    # Focus serves these files without credentials: the token never goes with a path.
    assert all("Authorization" not in r.headers for r in seen)
    assert len(seen) == 5
    assert seen[4].url.host == "focus.test"
    assert seen[4].url.raw_path == b"/notas/%C3%A9@127.0.0.1:9/x.xml"


async def test_a_download_spends_no_credit_and_waits_for_none() -> None:
    """The XML goes without credentials, so it is no request of the token's: a token whose
    window is spent still downloads at once, and the window is left as Focus last told it. A
    429 on a download (a limit on anonymous requests) is retried later, and blocks no token."""
    answers = iter(
        [
            httpx.Response(
                200,
                json={},
                headers={
                    "Rate-Limit-Limit": "100",
                    "Rate-Limit-Remaining": "0",
                    "Rate-Limit-Reset": "30",
                },
            ),
            httpx.Response(200, content=b"<xml/>"),
            httpx.Response(429, headers={"Retry-After": "7"}),
        ]
    )
    focus = client(lambda request: next(answers))
    try:
        await focus.emit_nfse("r1", {})  # the token's window: spent for 30 s
        window = focus.windows.window(TOKEN)
        before = (window.remaining, window.in_flight)
        got = await asyncio.wait_for(focus.download("/notas_fiscais_servico/r1.xml"), 1.0)
        with pytest.raises(RateLimited) as refused:
            await asyncio.wait_for(focus.download("/notas_fiscais_servico/r1.xml"), 1.0)
        assert (window.remaining, window.in_flight) == before == (0, 0)
    finally:
        await focus.aclose()
    assert got == b"<xml/>"
    assert refused.value.retry_after == 7.0


async def test_a_host_that_wants_credentials_for_the_file_gets_the_token_and_a_credit() -> None:
    """Should a host refuse the XML without credentials (a proxy, an environment that wants
    them), the download is asked again with the company's token, as a request of the token's:
    its credit is reserved and the answer's window observed."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "Authorization" not in request.headers:
            return httpx.Response(401, json={"codigo": "permissao_negada"})
        return httpx.Response(
            200,
            content=b"<xml/>",
            headers={
                "Rate-Limit-Limit": "100",
                "Rate-Limit-Remaining": "41",
                "Rate-Limit-Reset": "30",
            },
        )

    metrics = Metrics(CollectorRegistry())
    focus = FocusClient(
        BASE, TOKEN, timeout=5, transport=httpx.MockTransport(handler), metrics=metrics
    )
    try:
        got = await focus.download("/notas_fiscais_servico/r1.xml", tenant="alpha")
        window = focus.windows.window(TOKEN)
    finally:
        await focus.aclose()
    assert got == b"<xml/>"
    assert ["Authorization" in r.headers for r in seen] == [False, True]
    assert (
        seen[1].headers["Authorization"]
        == "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()
    )
    assert (window.remaining, window.in_flight) == (41, 0)
    credits = metrics.registry.get_sample_value(
        "notaflow_focus_credits_total", {"tenant": "alpha", "operation": "download"}
    )
    assert credits == 1.0


async def test_calls_waiting_for_a_slot_respect_a_429_that_came_meanwhile() -> None:
    """One slot, three calls: the first gets 429 (Retry-After 0.3 s) while the others wait for
    the slot; they must not go out before the window reopens."""
    sent: list[float] = []
    answered: list[float] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        sent.append(time.monotonic())
        await asyncio.sleep(0.05)
        answered.append(time.monotonic())
        if len(sent) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"}, json={})
        return httpx.Response(202, json={"status": "processando_autorizacao"})

    transport = httpx.MockTransport(handler)
    focus = FocusClient(BASE, TOKEN, timeout=5, transport=transport, max_in_flight=1)
    try:
        outcomes = await asyncio.gather(
            *(focus.emit_nfse(f"r{i}", {}) for i in range(3)), return_exceptions=True
        )
    finally:
        await focus.aclose()
    assert isinstance(outcomes[0], RateLimited)
    assert [getattr(o, "status_code", None) for o in outcomes[1:]] == [202, 202]
    assert sent[1] >= answered[0] + 0.3 - 0.01  # waited for the window, not just the slot
