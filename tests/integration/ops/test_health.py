"""The consumers' health server over real sockets, and the progress check's logic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from notaflow.health import HEAD_TIMEOUT, MAX_HEAD_BYTES, HealthServer, progress_check
from notaflow.metrics import Metrics


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole answer (the server closes), parse status and headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()


async def test_healthz_follows_the_check() -> None:
    healthy = True
    async with HealthServer("127.0.0.1", 0, lambda: healthy) as server:
        status, headers, body = await http(server.port, get("/healthz"))
        assert (status, body) == (200, b'{"status": "ok"}')
        assert headers["content-type"] == "application/json"
        assert headers["content-length"] == str(len(body))
        assert headers["connection"] == "close"
        healthy = False
        status, _, body = await http(server.port, get("/healthz?probe=liveness"))
        assert (status, body) == (503, b'{"status": "unhealthy"}')
        status, headers, body = await http(server.port, get("/healthz", "HEAD"))
        assert status == 503 and body == b"" and int(headers["content-length"]) > 0


async def test_a_failing_check_is_unhealthy_not_a_crash() -> None:
    def check() -> bool:
        raise RuntimeError("stats unavailable")

    async with HealthServer("127.0.0.1", 0, check) as server:
        assert (await http(server.port, get("/healthz")))[0] == 503
        assert (await http(server.port, get("/healthz")))[0] == 503  # still serving


async def test_metrics_served_when_a_registry_is_given() -> None:
    registry = CollectorRegistry()
    Metrics(registry).consumer_record("emission", "processed")
    async with HealthServer("127.0.0.1", 0, lambda: True, registry) as server:
        status, headers, body = await http(server.port, get("/metrics"))
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    assert b'notaflow_consumer_records_total{consumer="emission",outcome="processed"} 1.0' in body
    async with HealthServer("127.0.0.1", 0, lambda: True) as server:
        assert (await http(server.port, get("/metrics")))[0] == 404


async def test_bad_requests() -> None:
    async with HealthServer("127.0.0.1", 0, lambda: True) as server:
        port = server.port
        assert (await http(port, get("/other")))[0] == 404
        assert (await http(port, get("/healthz", "POST")))[0] == 405
        assert (await http(port, b"garbage\r\n\r\n"))[0] == 400
        huge = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES * 2) + b"\r\n\r\n"
        assert (await http(port, huge))[0] == 400
        # A client that sends half a request and leaves: closed, the server keeps serving.
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /hea")
        await writer.drain()
        writer.close()
        assert (await http(port, get("/healthz")))[0] == 200


async def test_stop_closes_idle_connections_promptly() -> None:
    server = HealthServer("127.0.0.1", 0, lambda: True)
    await server.start()
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes its head
    await writer.drain()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await server.stop()
    assert loop.time() - started < HEAD_TIMEOUT
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    try:
        await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        pass
    else:
        raise AssertionError("still accepting after stop")


async def test_concurrent_probes() -> None:
    async with HealthServer("127.0.0.1", 0, lambda: True) as server:
        answers = await asyncio.gather(*(http(server.port, get("/healthz")) for _ in range(50)))
    assert {status for status, _, _ in answers} == {200}


# --- progress_check ------------------------------------------------------------------------


@dataclass
class FakeStats:
    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    last_progress: float = 0.0


@dataclass
class World:
    now: float = 1000.0
    busy: bool = False
    stats: FakeStats = field(default_factory=FakeStats)

    def check(self, max_idle: float = 60.0) -> Callable[[], bool]:
        return progress_check(lambda: self.stats, max_idle, lambda: self.busy, lambda: self.now)


def test_idle_consumer_stays_healthy_forever() -> None:
    w = World()
    check = w.check()
    for _ in range(5):
        w.now += 3600
        assert check()


def test_work_arriving_after_a_long_idle_is_not_instantly_unhealthy() -> None:
    w = World()
    check = w.check()
    w.now += 10_000
    w.busy = True
    assert check()
    w.now += 59
    assert check()
    w.now += 2
    assert not check()  # busy for 61 s without progress


def test_progress_keeps_a_busy_consumer_healthy() -> None:
    w = World(busy=True)
    check = w.check()
    for _ in range(10):
        w.now += 50
        w.stats.processed += 1
        w.stats.last_progress = w.now
        assert check()


def test_retries_count_as_progress_but_a_hang_does_not() -> None:
    w = World(busy=True)
    check = w.check(max_idle=30)
    assert check()
    for _ in range(3):
        w.now += 25
        w.stats.retried += 1  # a record in backoff is alive
        assert check()
    w.now += 31
    assert not check()  # nothing moved for 31 s while busy
    w.stats.dead_lettered += 1
    assert check()  # it moved again
    w.busy = False
    w.now += 1000
    assert check()


def test_last_progress_alone_is_enough() -> None:
    class Minimal:
        last_progress = 0.0

    now = 100.0
    stats = Minimal()
    check = progress_check(lambda: stats, 10, lambda: True, lambda: now)
    assert check()
    now = 111.0
    assert not check()
    stats.last_progress = 110.0
    assert check()
