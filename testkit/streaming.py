"""The client side of the outage proofs: `POST /v2/nfse` in an open loop (one request every
INTERVAL seconds whatever the answers, so an outage cannot slow the stream down and hide
itself) and `/readyz` probed every 0.2 s, while a script injects the fault."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from testkit.stack import Stack

_T = TypeVar("_T")


@dataclass
class Answer:
    ref: str
    sent: float  # seconds since the stream began
    latency: float
    status: int | None  # None: no HTTP answer (timeout or connection error)
    body: Any
    retry_after: str | None = None


@dataclass
class Stream:
    answers: list[Answer] = field(default_factory=list)
    ready: list[tuple[float, float, int]] = field(default_factory=list)  # asked, answered, status


async def open_loop(
    stack: Stack,
    interval: float,
    prefix: str,
    script: Callable[[Callable[[], float]], Awaitable[_T]],
    timeout: float,
    settle_ready: float = 0.0,
) -> tuple[Stream, _T]:
    """Stream commands and probe readiness while `script(now)` runs (now(): seconds since the
    stream began); then wait for every answer, and, with `settle_ready`, keep probing until
    `/readyz` says 200 again (for at most that many seconds). `timeout` is the client's: far
    above any bound a test asserts, so a hang shows as a latency."""
    stream = Stream()
    # A connection per request: reusing an idle keep-alive connection races the server closing
    # it (uvicorn, after 5 s), a client-side ReadError that says nothing about the outage.
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
    document = with_valid_cnpjs(JSON_EXAMPLE)
    t0 = time.monotonic()
    stop = asyncio.Event()

    def now() -> float:
        return time.monotonic() - t0

    async with httpx.AsyncClient(
        base_url=stack.base, auth=(stack.token, ""), limits=limits, timeout=timeout
    ) as client:

        async def one(ref: str) -> None:
            sent = time.monotonic()
            status: int | None = None
            body: Any = None
            retry_after = None
            try:
                r = await client.post("/v2/nfse", params={"ref": ref}, json=document)
                status, retry_after = r.status_code, r.headers.get("retry-after")
                try:
                    body = r.json()
                except ValueError:
                    body = r.text
            except httpx.HTTPError as exc:
                body = repr(exc)
            stream.answers.append(
                Answer(ref, sent - t0, time.monotonic() - sent, status, body, retry_after)
            )

        async def probe() -> None:
            asked = now()
            try:
                r = await client.get("/readyz", timeout=5)
                stream.ready.append((asked, now(), r.status_code))
            except httpx.HTTPError:
                stream.ready.append((asked, now(), 0))

        async def readiness() -> None:
            while not stop.is_set():
                await probe()
                await asyncio.sleep(0.2)

        async def sender() -> None:
            tasks: list[asyncio.Task[None]] = []
            n = 0
            while not stop.is_set():
                tasks.append(asyncio.create_task(one(f"{prefix}{n:04d}")))
                n += 1
                await asyncio.sleep(max(0.0, t0 + n * interval - time.monotonic()))
            await asyncio.gather(*tasks)

        probing = asyncio.create_task(readiness())
        sending = asyncio.create_task(sender())
        try:
            result = await script(now)
        finally:
            stop.set()
            await sending
            await probing
        deadline = now() + settle_ready
        while stream.ready[-1][2] != 200 and now() < deadline:
            await asyncio.sleep(0.2)
            await probe()
    return stream, result
