"""Outbound webhooks: signatures (checked by the official Standard Webhooks verifier), the SSRF
policy, the retry schedule, and deliveries to a real HTTP receiver on 127.0.0.1.

No test touches DNS or any non-loopback address: resolution is injected everywhere a hostname
appears, and the one sender pointed at public addresses goes through `httpx.MockTransport`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from notaflow.consumers.providers.webhooks import (
    RETRY_SCHEDULE,
    DestinationRefused,
    HookTarget,
    WebhookSender,
    check_destination,
    next_attempt_delay,
    resolve_and_check,
)
from notaflow.errors import Permanent, Transient
from notaflow.keepalive import KeepAliveTransport
from notaflow.webhook_signing import WebhookVerificationError, new_secret, sign, verify
from testkit.receiver import Receiver, ReceiverServer, Reply

PAYLOAD: dict[str, Any] = {
    "ref": "nota-42",
    "status": "autorizado",
    "numero": "1234",
    "municipio": "São Paulo",
    "valor_servicos": 1500.5,
}


# --------------------------------------------------------------------------- real receiver


@pytest.fixture(scope="module")
def server() -> Iterator[Receiver]:
    srv = ReceiverServer()
    yield srv.start()
    srv.stop()


@pytest.fixture
def receiver(server: Receiver) -> Receiver:
    server.reset()
    return server


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"unexpected resolution of {host}")


def target(url: str, **kw: Any) -> HookTarget:
    kw.setdefault("signing_secret", SECRET)
    return HookTarget(url=url, **kw)


SECRET = new_secret()


# --------------------------------------------------------------------------- deliveries


async def test_delivers_signed_json_with_authorization(receiver: Receiver) -> None:
    now = int(time.time())
    async with WebhookSender(allow_private=True, resolver=no_dns) as sender:
        result = await sender.deliver(
            target(receiver.url(), authorization="Bearer s3cr3t"), PAYLOAD, "msg_1", now
        )

    assert result.ok and result.status_code == 200 and result.error is None
    assert not result.refused and not result.retryable and result.duration_ms > 0
    [seen] = receiver.seen
    assert seen.path == "/hook"
    assert seen.headers["authorization"] == "Bearer s3cr3t"
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["user-agent"] == "notaflow-webhooks"
    assert seen.headers["webhook-id"] == "msg_1"
    assert seen.headers["webhook-timestamp"] == str(now)
    # compact UTF-8 JSON, not \u-escaped
    assert seen.body == json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode()
    assert "São Paulo".encode() in seen.body

    assert Webhook(SECRET).verify(seen.body, seen.headers) == PAYLOAD  # the official verifier
    verify(SECRET, seen.headers, seen.body, now=time.time())


async def test_custom_authorization_header(receiver: Receiver) -> None:
    async with WebhookSender(allow_private=True) as sender:
        hook = target(receiver.url(), authorization="tok-123", authorization_header="X-Focus-Token")
        assert (await sender.deliver(hook, PAYLOAD, "msg_2", int(time.time()))).ok
        assert (await sender.deliver(target(receiver.url()), PAYLOAD, "m3", int(time.time()))).ok

    custom, plain = receiver.seen
    assert custom.headers["x-focus-token"] == "tok-123"
    assert "authorization" not in custom.headers
    assert "authorization" not in plain.headers and "x-focus-token" not in plain.headers


async def test_unprefixed_secret_interoperates(receiver: Receiver) -> None:
    raw = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    async with WebhookSender(allow_private=True) as sender:
        result = await sender.deliver(
            target(receiver.url(), signing_secret=raw), PAYLOAD, "msg_raw", int(time.time())
        )
    assert result.ok
    [seen] = receiver.seen
    Webhook(raw).verify(seen.body, seen.headers)
    Webhook("whsec_" + raw).verify(seen.body, seen.headers)
    verify("whsec_" + raw, seen.headers, seen.body, now=time.time())


async def test_fails_twice_then_succeeds_with_stable_webhook_id(receiver: Receiver) -> None:
    receiver.fail(1, status=500)
    receiver.fail(1, status=503)
    now = int(time.time())
    hook = target(receiver.url(), authorization="a")
    async with WebhookSender(allow_private=True) as sender:
        # as the consumer does: one delivery, re-signed at each attempt, same delivery id
        results = [await sender.deliver(hook, PAYLOAD, "dlv_7", now + i) for i in range(3)]

    assert [(r.ok, r.status_code, r.retryable) for r in results] == [
        (False, 500, True),
        (False, 503, True),
        (True, 200, False),
    ]
    assert results[0].error == "HTTP 500"
    assert len(receiver.seen) == 3
    assert {s.headers["webhook-id"] for s in receiver.seen} == {"dlv_7"}
    assert [s.headers["webhook-timestamp"] for s in receiver.seen] == [
        str(now + i) for i in range(3)
    ]
    for seen in receiver.seen:
        assert seen.body == receiver.seen[0].body
        Webhook(SECRET).verify(seen.body, seen.headers)


@pytest.mark.parametrize("status", [500, 502, 404, 400, 401, 410, 429, 304])
async def test_non_2xx_is_a_retryable_failure(receiver: Receiver, status: int) -> None:
    receiver.fail(1, status=status)
    async with WebhookSender(allow_private=True) as sender:
        result = await sender.deliver(target(receiver.url()), PAYLOAD, "m", int(time.time()))
    assert not result.ok and result.status_code == status and result.retryable
    assert result.error == f"HTTP {status}"


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
async def test_any_2xx_is_ok(receiver: Receiver, status: int) -> None:
    receiver.fail(1, status=status)
    async with WebhookSender(allow_private=True) as sender:
        result = await sender.deliver(target(receiver.url()), PAYLOAD, "m", int(time.time()))
    assert result.ok and result.status_code == status


async def test_timeout_is_a_retryable_failure(receiver: Receiver) -> None:
    receiver.script.append(Reply(delay=1.0))
    async with WebhookSender(allow_private=True, timeout=0.2) as sender:
        result = await sender.deliver(target(receiver.url()), PAYLOAD, "m", int(time.time()))
    assert not result.ok and result.status_code is None and result.retryable
    assert result.error is not None and "timeout" in result.error
    assert 150 < result.duration_ms < 900


async def test_connection_refused_is_a_retryable_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the delivery: nobody listens
    async with WebhookSender(allow_private=True) as sender:
        result = await sender.deliver(
            target(f"http://127.0.0.1:{port}/hook"), PAYLOAD, "m", int(time.time())
        )
    assert not result.ok and result.status_code is None and result.retryable
    assert result.error is not None and "ConnectError" in result.error


async def test_redirects_are_not_followed(receiver: Receiver) -> None:
    elsewhere = receiver.url("/elsewhere")
    receiver.script.append(Reply(status=307, headers={"Location": elsewhere}))
    receiver.script.append(Reply(status=302, headers={"Location": elsewhere}))
    transport = KeepAliveTransport()
    sender = WebhookSender(transport, allow_private=True)
    first = await sender.deliver(target(receiver.url()), PAYLOAD, "m", int(time.time()))
    second = await sender.deliver(target(receiver.url()), PAYLOAD, "m", int(time.time()))
    await sender.aclose()  # does not close a transport it was given
    third = await sender.deliver(target(receiver.url()), PAYLOAD, "m", int(time.time()))
    await transport.aclose()
    assert (first.ok, first.status_code, second.status_code) == (False, 307, 302)
    assert third.ok
    assert [s.path for s in receiver.seen] == ["/hook", "/hook", "/hook"]


async def test_loopback_refused_unless_private_allowed(receiver: Receiver) -> None:
    now = int(time.time())
    async with WebhookSender(allow_private=False, resolver=no_dns) as sender:
        result = await sender.deliver(target(receiver.url()), PAYLOAD, "m", now)
    assert not result.ok and result.refused and not result.retryable
    assert result.status_code is None and result.error is not None
    assert "127.0.0.1" in result.error
    assert receiver.seen == []

    async with WebhookSender(allow_private=True) as sender:
        assert (await sender.deliver(target(receiver.url()), PAYLOAD, "m", now)).ok
    assert len(receiver.seen) == 1


async def test_hostname_resolving_to_loopback_refused(receiver: Receiver) -> None:
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return ["127.0.0.1"]

    async with WebhookSender(resolver=resolver) as sender:
        result = await sender.deliver(
            target(receiver.url(host="hooks.example.com")), PAYLOAD, "m", int(time.time())
        )
    assert result.refused and asked == [("hooks.example.com", receiver.port)]
    assert receiver.seen == []


async def test_http_is_pinned_to_the_checked_address(receiver: Receiver) -> None:
    # 127.0.0.2 is loopback too but nobody listens there: the sender falls back to the next
    # checked address, and the receiver still sees the hostname in Host.
    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.2", "127.0.0.1"]

    async with WebhookSender(allow_private=True, resolver=resolver) as sender:
        url = receiver.url(host="receiver.test")
        result = await sender.deliver(target(url), PAYLOAD, "m", int(time.time()))
    assert result.ok, result
    [seen] = receiver.seen
    assert seen.headers["host"] == f"receiver.test:{receiver.port}"


class Redirecting:
    """Connections as the transport opens them, but to the local receiver: the sender's view
    of a public destination (which address, which TLS name) without leaving the machine.
    TLS is recorded, not spoken (the receiver is plain HTTP)."""

    def __init__(self, receiver: Receiver | None) -> None:
        self.receiver = receiver
        self.opened: list[tuple[str, int, bool, str | None]] = []

    async def __call__(
        self, host: str, port: int, *, ssl: Any = None, server_hostname: str | None = None,
        **kw: Any,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # fmt: skip
        self.opened.append((host, port, ssl is not None, server_hostname))
        if self.receiver is None:
            raise AssertionError(f"unexpected connection to {host}:{port}")
        return await asyncio.open_connection("127.0.0.1", self.receiver.port, **kw)


async def test_public_destination_pinned_without_network(receiver: Receiver) -> None:
    opener = Redirecting(receiver)
    resolver = {"hooks.example.com": ["93.184.216.34", "2606:2800:220:1::1"]}
    transport = KeepAliveTransport(opener=opener)
    async with WebhookSender(transport, resolver=lambda h, p: resolver[h]) as sender:
        plain = await sender.deliver(
            target("http://hooks.example.com/nf?x=1"), PAYLOAD, "m", 1_700_000_000
        )
        tls = await sender.deliver(
            target("https://hooks.example.com:8443/nf"), PAYLOAD, "m", 1_700_000_000
        )
        again = await sender.deliver(
            target("https://hooks.example.com:8443/nf"), PAYLOAD, "m", 1_700_000_000
        )
    await transport.aclose()
    assert plain.ok and tls.ok and again.ok
    # the first checked address, the name as Host; the query kept
    http_req, https_req, _ = receiver.seen
    assert http_req.path == "/nf" and http_req.query == "x=1"
    assert http_req.headers["host"] == "hooks.example.com"
    # https is pinned too (issue 19): the checked address, the name as Host, SNI and the
    # certificate's name; the connection is kept for that name only (one per origin and name)
    assert opener.opened == [
        ("93.184.216.34", 80, False, None),
        ("93.184.216.34", 8443, True, "hooks.example.com"),
    ]
    assert https_req.headers["host"] == "hooks.example.com:8443"


async def test_a_connection_verified_for_one_name_is_not_used_for_another(
    receiver: Receiver,
) -> None:
    opener = Redirecting(receiver)
    names = {"a.example.com": ["93.184.216.34"], "b.example.com": ["93.184.216.34"]}
    transport = KeepAliveTransport(opener=opener)
    async with WebhookSender(transport, resolver=lambda h, p: names[h]) as sender:
        for name in ("a.example.com", "b.example.com", "a.example.com"):
            assert (await sender.deliver(target(f"https://{name}/"), PAYLOAD, "m", 1)).ok
    await transport.aclose()
    assert opener.opened == [
        ("93.184.216.34", 443, True, "a.example.com"),
        ("93.184.216.34", 443, True, "b.example.com"),
    ]


async def test_any_private_address_among_public_ones_is_refused() -> None:
    opener = Redirecting(None)
    transport = KeepAliveTransport(opener=opener)
    sender = WebhookSender(transport, resolver=lambda h, p: ["93.184.216.34", "10.0.0.5"])
    result = await sender.deliver(target("https://rebind.example/"), PAYLOAD, "m", 1)
    assert result.refused and result.error is not None and "10.0.0.5" in result.error
    assert opener.opened == []


async def test_dns_failure_is_retryable_not_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    opener = Redirecting(None)
    transport = KeepAliveTransport(opener=opener)
    result = await WebhookSender(transport, resolver=resolver).deliver(
        target("https://nowhere.example/"), PAYLOAD, "m", 1
    )
    empty = await WebhookSender(transport, resolver=lambda h, p: []).deliver(
        target("https://nowhere.example/"), PAYLOAD, "m", 1
    )
    assert not result.ok and not result.refused and result.retryable
    assert result.error is not None and "nowhere.example" in result.error
    assert empty.retryable
    assert opener.opened == []


async def test_a_non_ascii_authorization_value_is_refused_not_raised(receiver: Receiver) -> None:
    hook = target(receiver.url(), authorization="Bearer çã")
    async with WebhookSender(allow_private=True) as sender:
        result = await sender.deliver(hook, PAYLOAD, "m", int(time.time()))
    assert result.refused and result.error is not None and "ASCII" in result.error
    assert receiver.seen == []


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Host", "evil.example"),
        ("webhook-signature", "v1,forged"),
        ("Content-Length", "0"),
        ("Transfer-Encoding", "chunked"),
        ("bad name", "x"),
        ("X-Token:", "x"),
        ("Authorization", "x\r\nX-Injected: 1"),
        ("Authorization", "x\nX-Injected: 1"),
    ],
)
async def test_bad_authorization_header_refused(
    receiver: Receiver, header: str, value: str
) -> None:
    hook = target(receiver.url(), authorization=value, authorization_header=header)
    async with WebhookSender(allow_private=True) as sender:
        result = await sender.deliver(hook, PAYLOAD, "m", int(time.time()))
    assert result.refused and not result.ok
    assert receiver.seen == []


async def test_refused_scheme_through_the_sender() -> None:
    async with WebhookSender(allow_private=True) as sender:
        result = await sender.deliver(target("file:///etc/passwd"), PAYLOAD, "m", 1)
    assert result.refused and result.error is not None and "scheme" in result.error


# --------------------------------------------------------------------------- SSRF policy

REFUSED_ADDRESSES = [
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "127.0.0.1",
    "127.1.2.3",
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",
    "100.64.0.1",  # carrier-grade NAT
    "192.0.2.10",  # documentation
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456:789a::1",
    "fe80::1",
    "fe80::1%eth0",
    "ff02::1",
    "ff0e::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "2001:db8::1",
    "2002:7f00:1::",  # 6to4 around 127.0.0.1
    "2002:a00:1::",  # 6to4 around 10.0.0.1
    "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
]
ALLOWED_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",  # just outside 172.16/12
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
]


def resolving_to(*addresses: str) -> Any:
    return lambda host, port: list(addresses)


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_refuses_non_public_addresses(address: str) -> None:
    with pytest.raises(DestinationRefused, match="non-public"):
        check_destination("https://hooks.example.com/x", False, resolving_to(address))
    check_destination("https://hooks.example.com/x", True, no_dns)


@pytest.mark.parametrize("address", ALLOWED_ADDRESSES)
def test_allows_public_addresses(address: str) -> None:
    check_destination("https://hooks.example.com/x", False, resolving_to(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://10.1.2.3:8080/x",
        "https://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:9000/",
    ],
)
def test_ip_literals_checked_without_resolution(url: str) -> None:
    with pytest.raises(DestinationRefused):
        check_destination(url, False, no_dns)
    check_destination(url, True, no_dns)


def test_every_resolved_address_must_be_public() -> None:
    with pytest.raises(DestinationRefused, match=r"192\.168\.0\.7"):
        check_destination("http://a.example/", False, resolving_to("8.8.8.8", "192.168.0.7"))


def test_numeric_hostnames_are_judged_by_their_resolution() -> None:
    # getaddrinfo reads "2130706433" and "0x7f.1" as 127.0.0.1
    for host in ("2130706433", "0x7f.1", "localhost", "localtest.me."):
        with pytest.raises(DestinationRefused):
            check_destination(f"http://{host}/", False, resolving_to("127.0.0.1"))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://hooks.example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://hooks.example.com:70/", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("hooks.example.com/path", "scheme"),
        ("http:///path", "host"),
        ("http://user:pass@hooks.example.com/", "credentials"),
        ("https://user@hooks.example.com/", "credentials"),
        ("http://[::1/", "invalid URL"),
    ],
)
def test_refuses_bad_urls_even_when_private_allowed(url: str, reason: str) -> None:
    for allow_private in (False, True):
        with pytest.raises(DestinationRefused, match=reason):
            check_destination(url, allow_private, no_dns)


def test_destination_refused_is_permanent_and_dns_failure_transient() -> None:
    assert issubclass(DestinationRefused, Permanent)
    assert not DestinationRefused.retriable

    def broken(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    with pytest.raises(Transient):
        check_destination("https://hooks.example.com/", False, broken)


async def test_resolve_and_check_sync_and_async_resolvers() -> None:
    async def async_resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("hooks.example.com", 443)
        return ["8.8.8.8", "8.8.8.8", "2001:4860:4860::8888"]

    url = "https://hooks.example.com/x"
    assert await resolve_and_check(url, False, async_resolver) == [
        "8.8.8.8",
        "2001:4860:4860::8888",
    ]
    assert await resolve_and_check(url, False, resolving_to("1.1.1.1")) == ["1.1.1.1"]
    assert await resolve_and_check("http://[::1]:81/", True, no_dns) == ["::1"]
    assert await resolve_and_check("http://x.test/", True, resolving_to("10.0.0.1")) == ["10.0.0.1"]
    with pytest.raises(DestinationRefused):
        await resolve_and_check("http://x.test/", False, resolving_to("10.0.0.1"))


async def test_a_url_parse_is_kept_but_every_delivery_resolves_and_checks_again() -> None:
    # The parse of a hook's URL is kept between deliveries (destinations.parse_destination);
    # its host's addresses and their check are not: a name that now points inside is refused.
    url = "https://kept-parse.example/hook"
    assert await resolve_and_check(url, False, resolving_to("8.8.8.8")) == ["8.8.8.8"]
    with pytest.raises(DestinationRefused, match=r"10\.0\.0\.1"):
        await resolve_and_check(url, False, resolving_to("10.0.0.1"))
    assert await resolve_and_check(url, False, resolving_to("1.1.1.1")) == ["1.1.1.1"]
    for _ in range(2):  # a refused URL is refused each time, not kept as parsed
        with pytest.raises(DestinationRefused, match="credentials"):
            await resolve_and_check("https://u@kept-parse.example/", True, no_dns)


# --------------------------------------------------------------------------- retry schedule


def test_schedule_is_focus_and_gives_up_after_it() -> None:
    assert RETRY_SCHEDULE == (60, 1800, 3600, 10800, 86400)
    delays = [next_attempt_delay(n, RETRY_SCHEDULE, jitter=0) for n in range(1, 7)]
    assert delays == [60, 1800, 3600, 10800, 86400, None]
    assert next_attempt_delay(100, RETRY_SCHEDULE) is None
    assert next_attempt_delay(1, ()) is None


def test_schedule_jitter_bounds() -> None:
    assert next_attempt_delay(2, RETRY_SCHEDULE, uniform=lambda a, b: a) == pytest.approx(1620)
    assert next_attempt_delay(2, RETRY_SCHEDULE, uniform=lambda a, b: b) == pytest.approx(1980)
    for attempt, base in enumerate(RETRY_SCHEDULE, start=1):
        samples = [next_attempt_delay(attempt, RETRY_SCHEDULE) for _ in range(300)]
        assert all(s is not None and base * 0.9 <= s <= base * 1.1 for s in samples)
        assert len(set(samples)) > 1  # actually jittered


def test_schedule_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        next_attempt_delay(0, RETRY_SCHEDULE)
    with pytest.raises(ValueError):
        next_attempt_delay(1, RETRY_SCHEDULE, jitter=1.5)


# --------------------------------------------------------------------------- sign / verify

BODY = b'{"ref":"nota-42","status":"autorizado"}'
NOW = 1_700_000_000


def signed_headers(secret: str = SECRET, body: bytes = BODY, ts: int = NOW) -> dict[str, str]:
    return {
        "webhook-id": "msg_x",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, "msg_x", ts, body),
    }


def test_sign_matches_the_official_library() -> None:
    from datetime import UTC, datetime

    official = Webhook(SECRET).sign("msg_x", datetime.fromtimestamp(NOW, UTC), BODY.decode())
    assert sign(SECRET, "msg_x", NOW, BODY) == official
    assert sign(SECRET.removeprefix("whsec_"), "msg_x", NOW, BODY) == official
    assert sign(SECRET.rstrip("="), "msg_x", NOW, BODY) == official  # unpadded


def test_new_secret() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_")
    assert len(base64.b64decode(a.removeprefix("whsec_"), validate=True)) == 24
    Webhook(a)  # the official library accepts it


def test_verify_accepts_a_good_delivery_case_insensitively() -> None:
    verify(SECRET, signed_headers(), BODY, now=NOW)
    upper = {k.upper(): v for k, v in signed_headers().items()}
    verify(SECRET, upper, BODY, now=NOW + 299)
    verify(SECRET, httpx.Headers(signed_headers()), BODY, now=NOW - 299)


def test_verify_accepts_one_of_several_signatures() -> None:
    old = new_secret()
    headers = signed_headers()
    good = headers["webhook-signature"]
    headers["webhook-signature"] = " ".join(
        [sign(old, "msg_x", NOW, BODY), "v2,whatever", "v1,not base64!", good]
    )
    verify(SECRET, headers, BODY, now=NOW)
    # rotation: the receiver still holding the old secret also accepts it
    headers["webhook-signature"] = f"{sign(old, 'msg_x', NOW, BODY)} {good}"
    verify(old, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h, b: (h, b + b" "), "no matching signature"),
        (lambda h, b: (h, b.replace(b"autorizado", b"cancelado")), "no matching signature"),
        (lambda h, b: ({**h, "webhook-id": "msg_y"}, b), "no matching signature"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW - 301)}, b), "too old"),
        (lambda h, b: ({**h, "webhook-timestamp": str(NOW + 301)}, b), "too new"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "invalid webhook-timestamp"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), "missing"),
        (lambda h, b: ({**h, "webhook-signature": ""}, b), "missing"),
        (lambda h, b: ({**h, "webhook-signature": "v1,"}, b), "no matching signature"),
    ],
)
def test_verify_rejects(mutate: Any, message: str) -> None:
    headers, body = mutate(signed_headers(), BODY)
    with pytest.raises(WebhookVerificationError, match=message):
        verify(SECRET, headers, body, now=NOW)


def test_verify_rejects_wrong_secret_and_old_message() -> None:
    with pytest.raises(WebhookVerificationError, match="no matching signature"):
        verify(new_secret(), signed_headers(), BODY, now=NOW)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(SECRET, signed_headers(), BODY, now=NOW + 3600)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify(SECRET, signed_headers(), BODY, now=NOW + 61, tolerance=60)


def test_invalid_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        sign("whsec_", "m", NOW, BODY)
    with pytest.raises(ValueError):
        sign("not base64 at all!", "m", NOW, BODY)


class _CountingReceiver:
    """A raw HTTP/1.1 receiver that counts connections and answers `answer` to every POST."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                writer.write(self.answer)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):  # the client went away
            writer.close()


async def _counting_server(answer: bytes) -> tuple[_CountingReceiver, asyncio.Server, str]:
    receiver = _CountingReceiver(answer)
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    return receiver, server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"


async def _deliver_ok(url: str, count: int, timeout: float = 10) -> None:
    """`count` deliveries through one sender, each answered 2xx."""
    async with WebhookSender(allow_private=True, resolver=no_dns, timeout=timeout) as sender:
        for i in range(count):
            result = await sender.deliver(target(url), {"n": i}, f"msg_{i}", int(time.time()))
            assert result.ok, result


async def test_short_answers_keep_one_connection() -> None:
    """A hook's short answer is read through, so its connection is reused: closing it unread
    closed the connection, one TCP connection (and its httpcore objects) per hook."""
    receiver, server, url = await _counting_server(
        b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{"ok":true}'
    )
    try:
        await _deliver_ok(url, 10)
    finally:
        server.close()
    assert receiver.connections == 1


async def test_a_huge_answer_is_not_read_through() -> None:
    """A receiver answering megabytes gets its status read, not its body: the delivery is
    done as soon as the bounded read stops, and the next one opens a fresh connection."""
    size = 50 * 1024 * 1024
    receiver, server, url = await _counting_server(
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * (256 * 1024)
    )
    try:
        await _deliver_ok(url, 2, timeout=5)
    finally:
        server.close()
    assert receiver.connections == 2
