"""The Focus adapter's keep-alive transport against a real socket server: reuse, bodies
(length and chunked), a server that closes, timeouts mapped to httpx's exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from notaflow.consumers.providers.focus import FocusClient
from notaflow.keepalive import KeepAliveTransport


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        self.stall = False
        self.close_after = False
        # Each connection's first request answered, a later one read and the connection closed
        # unanswered: kept connections the server dropped while a request was on its way.
        self.forget_after_first = False
        self.heads: list[bytes] = []
        self.port = 0  # set once listening

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = False
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:  # the client closed it
                writer.close()
                return
            self.heads.append(head)
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            if self.forget_after_first and answered:
                writer.close()
                return
            answered = True
            if self.stall:
                await asyncio.sleep(5)
            writer.write(self.answer)
            await writer.drain()
            if self.close_after or b"connection: close" in self.answer.lower():
                writer.close()
                return


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    s = Server()
    srv = await asyncio.start_server(s.handle, "127.0.0.1", 0)
    s.port = srv.sockets[0].getsockname()[1]
    yield s, f"http://127.0.0.1:{s.port}"
    srv.close()


async def test_reuses_one_connection_for_sequential_calls(server: tuple[Server, str]) -> None:
    s, base = server
    async with httpx.AsyncClient(base_url=base, transport=KeepAliveTransport()) as client:
        for _ in range(5):
            resp = await client.post("/v2/nfse", params={"ref": "a"}, json={"x": 1})
            assert resp.status_code == 200 and resp.text == "ok"
    assert s.connections == 1


async def test_chunked_body_and_concurrency(server: tuple[Server, str]) -> None:
    s, base = server
    s.answer = (
        b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n"
        b'content-type: application/json\r\n\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n'
    )
    transport = KeepAliveTransport(max_connections=3)
    async with httpx.AsyncClient(base_url=base, transport=transport) as client:
        replies = await asyncio.gather(*(client.get("/x") for _ in range(10)))
    assert all(r.status_code == 202 and r.json() == {"a": 1} for r in replies)
    assert s.connections <= 3


async def test_connection_close_is_not_reused(server: tuple[Server, str]) -> None:
    s, base = server
    s.answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    async with httpx.AsyncClient(base_url=base, transport=KeepAliveTransport()) as client:
        for _ in range(3):
            assert (await client.get("/x")).text == "ok"
    assert s.connections == 3


@pytest.mark.parametrize(
    ("answer", "text", "reused"),
    [
        # An interim 100 Continue is skipped; the real answer follows on the same read.
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            "ok",
            True,
        ),
        # HTTP/1.0 without keep-alive: answered, never reused.
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", "ok", False),
        # A body framed by the end of the connection.
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end", "until the end", False),
    ],
)
async def test_framings(server: tuple[Server, str], answer: bytes, text: str, reused: bool) -> None:
    s, base = server
    s.answer = answer
    async with httpx.AsyncClient(base_url=base, transport=KeepAliveTransport()) as client:
        for _ in range(2):
            resp = await client.post("/x", content=b"{}")
            assert (resp.status_code, resp.text) == (200, text)
    assert s.connections == (1 if reused else 2)


@pytest.mark.parametrize(
    "answer",
    [
        b"SPDY/3 200 OK\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\ncontent-length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nshort",
    ],
)
async def test_malformed_answers_are_remote_protocol_errors(
    server: tuple[Server, str], answer: bytes
) -> None:
    s, base = server
    s.answer = answer
    s.close_after = True
    async with httpx.AsyncClient(base_url=base, transport=KeepAliveTransport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/x")


async def test_timeouts_and_refusals_are_httpx_errors(server: tuple[Server, str]) -> None:
    s, base = server
    s.stall = True
    async with httpx.AsyncClient(
        base_url=base, transport=KeepAliveTransport(), timeout=0.2
    ) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/x")
    async with httpx.AsyncClient(transport=KeepAliveTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:1/x")


async def test_a_call_waiting_for_a_free_connection_times_out_as_httpx_does(
    server: tuple[Server, str],
) -> None:
    # The pool timer is only set when every slot is taken: here one call holds the only one.
    s, _ = server
    s.stall = True
    port = s.port
    transport = KeepAliveTransport(max_connections=1)
    holding = asyncio.create_task(_call(transport, port))
    await asyncio.sleep(0.1)
    try:
        with pytest.raises(httpx.PoolTimeout):
            await _call(transport, port, timeouts={"pool": 0.2})
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
        s.stall = False
        assert await _call(transport, port) == b"ok"  # the slot came back
    finally:
        holding.cancel()
        await transport.aclose()


async def test_a_body_the_server_does_not_read_times_out_writing() -> None:
    # The write timer is only set when the socket did not take the whole request at once.
    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)
        writer.close()

    sink = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = sink.sockets[0].getsockname()[1]
    transport = KeepAliveTransport()
    try:
        with pytest.raises(httpx.WriteTimeout):
            await _call(transport, port, body=b"x" * (64 * 1024 * 1024), timeouts={"write": 0.3})
    finally:
        await transport.aclose()
        sink.close()


async def test_focus_adapter_on_this_transport_sends_what_httpx_would(
    server: tuple[Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter hands its requests to this transport as bytes: the request line and headers
    httpx's client would send; the reply's status and body come back."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    s, base = server
    s.answer = (
        b"HTTP/1.1 202 Accepted\r\nRate-Limit-Remaining: 7\r\nRate-Limit-Reset: 60\r\n"
        b'content-length: 17\r\n\r\n{"status":"ok-1"}'
    )
    document = {"servico": {"discriminacao": "ção"}}
    focus = FocusClient(base, "tok", timeout=5)
    try:
        reply = await focus.emit_nfse("N1A1", document)
    finally:
        await focus.aclose()
    assert (reply.status_code, reply.body) == (202, {"status": "ok-1"})
    lines = s.heads[0].split(b"\r\n")
    assert lines[0] == b"POST /v2/nfse?ref=N1A1 HTTP/1.1"
    fields = {
        k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:] if line)
    }
    assert fields[b"authorization"] == b"Basic dG9rOg=="
    assert fields[b"content-type"] == b"application/json"
    assert (
        fields[b"content-length"]
        == str(
            len(json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode())
        ).encode()
    )
    assert fields[b"user-agent"] == b"notaflow"
    assert fields[b"host"] == base.removeprefix("http://").encode()


async def test_a_response_leaves_nothing_for_the_cyclic_collector(
    server: tuple[Server, str],
) -> None:
    """Each response's parser and callbacks go by reference counting. When they made a cycle,
    thousands of them a second piled up for the collector, whose pauses freeing them made the
    emission consumer's command-to-POST p99 (96 ms against 18 ms once broken)."""
    import gc

    from notaflow import keepalive

    _s, base = server
    gc.collect()
    gc.disable()
    try:
        async with httpx.AsyncClient(base_url=base, transport=KeepAliveTransport()) as client:
            for _ in range(50):
                assert (await client.post("/x", content=b"{}")).text == "ok"
            left = [o for o in gc.get_objects() if isinstance(o, keepalive._Sink)]
    finally:
        gc.enable()
    assert left == []


async def _call(
    transport: KeepAliveTransport,
    port: int,
    body: bytes = b"{}",
    timeouts: dict[str, float | None] | None = None,
    **kw: Any,
) -> bytes:
    reply = await transport.exchange(
        b"http", "127.0.0.1", port, b"POST", b"/h", [(b"Host", b"h")], body, timeouts or {}, **kw
    )
    return reply.content


async def test_a_kept_connection_dropped_by_the_server_is_retried_once_when_asked(
    server: tuple[Server, str],
) -> None:
    s, _ = server
    s.forget_after_first = True
    port = s.port
    transport = KeepAliveTransport()
    try:
        assert await _call(transport, port, retry_stale=True) == b"ok"
        assert await _call(transport, port, retry_stale=True) == b"ok"  # dropped, then retried
        assert (s.connections, len(s.heads)) == (2, 3)
        # Not asked: the failure is the caller's (the Focus adapter's calls are not retried here).
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await _call(transport, port)
    finally:
        await transport.aclose()


async def test_the_retry_opens_a_new_connection_not_another_kept_one(
    server: tuple[Server, str],
) -> None:
    """Two kept connections, both dropped by the server (a restart): the retry does not take
    the second dead one."""
    s, _ = server
    s.forget_after_first = True
    port = s.port
    transport = KeepAliveTransport()
    try:
        assert await asyncio.gather(_call(transport, port), _call(transport, port)) == [b"ok"] * 2
        assert await _call(transport, port, retry_stale=True) == b"ok"
        assert s.connections == 3
    finally:
        await transport.aclose()


async def test_a_new_connection_failing_is_not_retried() -> None:
    requests = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        writer.close()

    srv = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    transport = KeepAliveTransport()
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await _call(transport, port, retry_stale=True)
    finally:
        await transport.aclose()
        srv.close()
    assert requests == 1


async def test_idle_connections_are_bounded_per_origin_and_expire(
    server: tuple[Server, str],
) -> None:
    s, _ = server
    port = s.port
    transport = KeepAliveTransport(max_idle_per_origin=2, idle_expiry=0.2)
    try:
        await asyncio.gather(*(_call(transport, port) for _ in range(5)))
        assert s.connections == 5
        # two were kept: five calls at once open three more
        await asyncio.gather(*(_call(transport, port) for _ in range(5)))
        assert s.connections == 8
        await asyncio.sleep(0.3)  # past the expiry: a kept connection is not used
        await _call(transport, port)
        assert s.connections == 9
    finally:
        await transport.aclose()


async def test_a_burst_keeps_its_connections_for_the_next_within_the_total_bound(
    server: tuple[Server, str],
) -> None:
    """Two kept per origin at least, more while all origins together keep fewer than six: a
    burst's connections serve the next burst instead of being closed and opened again."""
    s, _ = server
    port = s.port
    transport = KeepAliveTransport(max_idle_per_origin=2, max_idle=6, idle_expiry=0.3)
    other = {"server_hostname": "other"}  # another origin on the same server

    async def burst(n: int, **kw: Any) -> int:
        before = s.connections
        await asyncio.gather(*(_call(transport, port, **kw) for _ in range(n)))
        return s.connections - before

    try:
        assert await burst(8) == 8
        assert await burst(8) == 2  # six were kept, up to the total
        assert await burst(3, **other) == 3
        assert await burst(3, **other) == 1  # its own two, though the total is reached
        assert await burst(8) == 2
        await asyncio.sleep(0.4)  # past the expiry: none is used, and all are swept
        assert await burst(1) == 1
        assert await burst(3, **other) == 3
    finally:
        await transport.aclose()


async def test_a_long_answer_is_read_no_further_than_asked(server: tuple[Server, str]) -> None:
    s, _ = server
    port = s.port
    s.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1_000_000
    transport = KeepAliveTransport()
    try:
        content = await _call(transport, port, max_body=1000)
        assert 1000 < len(content) < 1000 + 64 * 1024 + 1
        s.answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        assert await _call(transport, port) == b"ok"
    finally:
        await transport.aclose()
    assert s.connections == 2  # the cut connection was not reused
