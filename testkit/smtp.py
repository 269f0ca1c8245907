"""The project's SMTP sink in a thread, for synchronous tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ThreadedSmtpSink:
    """The project's SMTP sink (aiosmtpd) on its own event loop in a thread, so synchronous
    tests can count and script what a real SMTP server receives."""

    def __init__(self, outbox: Path | None = None) -> None:
        from notaflow.sandbox.smtp_sink import SmtpSink

        self.loop = asyncio.new_event_loop()
        self.sink = SmtpSink(outbox)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedSmtpSink:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.sink.start(), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        return int(self.sink.port)

    def settings(self) -> dict[str, Any]:
        """The settings that send a notaflow process's e-mail here (plain SMTP on loopback),
        for `Settings(...)` or `settings.replace(...)`; the sender and pause stay the test's."""
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port, "smtp_security": "none"}

    def call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def received(self) -> list[Any]:
        return list(self.call(lambda: list(self.sink.received)))

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.sink.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
