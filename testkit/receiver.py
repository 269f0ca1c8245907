"""A webhook endpoint on a real loopback socket that records requests and answers from a script."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass(frozen=True)
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    held: bool = False  # answered only after `Receiver.release()` (or the server's stop)


class Receiver:
    """A webhook endpoint on a real socket: records every request, answers from a script."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[Seen] = []
        self.script: deque[Reply] = deque()
        self._released: asyncio.Event | None = None  # made on the server's loop
        self._loop: asyncio.AbstractEventLoop | None = None

    def release(self) -> None:
        """Answer the held requests (from any thread)."""
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def fail(self, times: int, status: int = 500) -> None:
        self.script.extend(Reply(status) for _ in range(times))

    def reset(self) -> None:
        self.seen.clear()
        self.script.clear()

    async def endpoint(self, request: Request) -> Response:
        seen = Seen(
            request.url.path, dict(request.headers), await request.body(), request.url.query
        )
        self.seen.append(seen)
        reply = self.script.popleft() if self.script else Reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.held:
            if self._released is None:
                self._loop, self._released = asyncio.get_running_loop(), asyncio.Event()
            await self._released.wait()
        return Response(status_code=reply.status, headers=reply.headers)


class ReceiverServer:
    """`Receiver` served by uvicorn in a thread (IPPROTO_TCP socket: TCP_NODELAY on)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.receiver = Receiver(self.sock.getsockname()[1])
        app = Starlette(
            routes=[Route("/{path:path}", self.receiver.endpoint, methods=["GET", "POST", "PUT"])]
        )
        config = uvicorn.Config(
            app, loop="asyncio", http="h11", lifespan="off", log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        return self.receiver

    def stop(self) -> None:
        self.receiver.release()  # the server waits for the requests it is answering
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()
