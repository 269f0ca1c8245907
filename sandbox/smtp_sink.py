"""A local SMTP server that keeps what it receives: the mail server of `notaflow dev` and tests.

Every message is written to `outbox` as an `.eml` file a person can open in a mail client
(names sort by arrival) and kept in memory for tests. Failures on demand, like a real server:
`refuse(pattern)` answers 550 to matching recipients, `fail_temporarily(n)` answers 451 to the
next n transactions, `require_auth(user, password)` demands AUTH PLAIN/LOGIN (allowed over a
plain connection here, never in production).

The server runs in the caller's event loop (no thread), so tests and the dev stack share it.
"""

from __future__ import annotations

import asyncio
import email
import itertools
import re
import ssl
import uuid
import warnings
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["ReceivedMessage", "SmtpSink", "ehlo_reply", "serve_smtp_sink"]

HOSTNAME = "notaflow-smtp-sink"


def ehlo_reply(
    session: Session, hostname: str, responses: list[str], *, pipelining: bool = True
) -> list[str]:
    """What an aiosmtpd handler's `handle_EHLO` answers to offer PIPELINING (RFC 2920), as
    production servers do. aiosmtpd reads commands one line at a time from its stream, so
    commands sent together are answered in order: it only never says it takes them."""
    session.host_name = hostname  # this form of the hook owns that (aiosmtpd's docs)
    if pipelining:
        responses.insert(-1, "250-PIPELINING")
    return responses


@dataclass(frozen=True)
class ReceivedMessage:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes
    path: Path | None  # the .eml file, when the sink has an outbox
    peer: Any = None  # the client's (host, port): which connection brought it


class SmtpSink:
    def __init__(
        self,
        outbox: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        pipelining: bool = True,
    ) -> None:
        """`port=0` picks a free port (read `.port` after start). With `tls_context` the sink
        offers STARTTLS, or speaks TLS from the first byte when `implicit_tls`. It offers
        PIPELINING (RFC 2920) as production servers do, unless `pipelining` is False."""
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.outbox = outbox
        self.host = host
        self.port = port
        self.received: list[ReceivedMessage] = []
        self._tls_context = tls_context
        self._implicit_tls = implicit_tls
        self.pipelining = pipelining
        self._server: asyncio.Server | None = None
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._arrived = asyncio.Event()
        self._seq = itertools.count(1)
        self._refuse: list[re.Pattern[str]] = []
        self._fail_rcpt = 0
        self._fail_data = 0
        self._doomed: weakref.WeakSet[Envelope] = weakref.WeakSet()
        self._credentials: tuple[str, str] | None = None

    # -- test behaviours -----------------------------------------------------------------------

    def refuse(self, pattern: str) -> None:
        """Answer 550 to every recipient matching `pattern` (re.search, case-insensitive)."""
        self._refuse.append(re.compile(pattern, re.IGNORECASE))

    def fail_temporarily(self, times: int = 1, at: Literal["rcpt", "data"] = "rcpt") -> None:
        """Answer 451 to the next `times` transactions: to all their recipients, or at DATA."""
        if at == "rcpt":
            self._fail_rcpt += times
        else:
            self._fail_data += times

    def require_auth(self, username: str, password: str) -> None:
        """From the next connection on, no MAIL without AUTH as this user."""
        self._credentials = (username, password)

    def reset(self) -> None:
        """Forget behaviours and received messages (files in the outbox stay)."""
        self._refuse.clear()
        self._fail_rcpt = self._fail_data = 0
        self._credentials = None
        self.received.clear()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedMessage]:
        """Wait until at least `count` messages arrived; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return list(self.received)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.outbox is not None:
            self.outbox.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            self.host,
            self.port,
            ssl=self._tls_context if self._implicit_tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self._connections):  # Server.close_clients() is 3.13+
                if connection.transport is not None:
                    connection.transport.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SmtpSink:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _protocol(self) -> SMTP:
        # Built per connection, so behaviours set after start() apply to the next client.
        with warnings.catch_warnings():
            # "AUTH without TLS" is the point of a local sink; production never runs it.
            warnings.simplefilter("ignore", UserWarning)
            connection = SMTP(
                self,
                hostname=HOSTNAME,
                enable_SMTPUTF8=True,
                tls_context=None if self._implicit_tls else self._tls_context,
                auth_required=self._credentials is not None,
                auth_require_tls=False,
                authenticator=self._authenticate,
                timeout=60,
            )
        self._connections.add(connection)
        return connection

    # -- aiosmtpd handler hooks ---------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        return ehlo_reply(session, hostname, responses, pipelining=self.pipelining)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if self._credentials is None:  # nothing required: any login is welcome
            return AuthResult(success=True)
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = self._credentials
        ok = data.login.decode() == user and data.password.decode() == password
        return AuthResult(success=ok, handled=False)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        if self._fail_rcpt > 0:
            self._fail_rcpt -= 1
            self._doomed.add(envelope)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if envelope in self._doomed:
            return "451 4.3.0 Temporary failure, try again later"
        if any(p.search(address) for p in self._refuse):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self._fail_data > 0:
            self._fail_data -= 1
            return "451 4.3.0 Temporary failure, try again later"
        raw = envelope.original_content or b""
        mail_from = envelope.mail_from or ""
        rcpt_tos = list(envelope.rcpt_tos)
        path = None
        if self.outbox is not None:
            path = await asyncio.to_thread(self._write, mail_from, rcpt_tos, raw)
        parsed = cast(EmailMessage, email.message_from_bytes(raw, policy=default_policy))
        self.received.append(ReceivedMessage(mail_from, rcpt_tos, parsed, raw, path, session.peer))
        self._arrived.set()
        return "250 2.0.0 OK: queued"

    def _write(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> Path:
        assert self.outbox is not None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"{stamp}-{next(self._seq):06d}-{uuid.uuid4().hex[:8]}.eml"
        # The envelope is not in the headers (Bcc): record it the way delivery agents do.
        trace = f"Return-Path: <{mail_from}>\r\nX-Envelope-To: {', '.join(rcpt_tos)}\r\n"
        path = self.outbox / name
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(trace.encode() + raw)
        tmp.replace(path)  # a reader never opens half a message
        return path


async def serve_smtp_sink(outbox: Path | None, host: str = "127.0.0.1", port: int = 1025) -> None:
    """Run a sink until cancelled (for `notaflow dev`)."""
    async with SmtpSink(outbox, host, port):
        await asyncio.Event().wait()
