"""The notification fault tests' world: the production processes, a real SMTP server (the
project's aiosmtpd sink) and a real hook receiver with a hook on every note."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notaflow.settings import Settings
from testkit.receiver import Receiver, ReceiverServer
from testkit.smtp import ThreadedSmtpSink
from testkit.stack import Stack


@dataclass
class World:
    stack: Stack
    sink: ThreadedSmtpSink
    receiver: Receiver


@contextlib.contextmanager
def notification_world(
    settings: Settings,
    tmp_path: Path,
    consumers: tuple[str, ...],
    hook_path: str = "/hook",
    **overrides: Any,
) -> Iterator[World]:
    """The stack with `consumers`, e-mail to the sink, and a hook (`event: nfse`, any company)
    to the receiver's `hook_path`; `overrides` are further settings."""
    sink = ThreadedSmtpSink(tmp_path / "outbox").start()
    server = ReceiverServer()
    receiver = server.start()
    stack = Stack(
        settings.replace(
            **sink.settings(),
            smtp_sender="nfse@notaflow.test",
            smtp_pause=0.0,
            hooks_allow_private=True,
            **overrides,
        ),
        tmp_path,
        sandbox_delay=0.2,
        consumers=consumers,
    ).start()
    try:
        with stack.client() as c:
            hook = c.post("/v2/hooks", json={"event": "nfse", "url": receiver.url(hook_path)})
            assert hook.status_code == 200, hook.text
        yield World(stack, sink, receiver)
    finally:
        stack.stop()
        server.stop()
        sink.stop()
