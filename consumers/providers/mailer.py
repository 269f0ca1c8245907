"""SMTP mailer: sends one message and answers per envelope recipient.

Every aiosmtplib, socket and TLS error is mapped here, once (`map_smtp_error`), to the error
tree of `notaflow.errors`:

    connection refused / reset, timeouts, 4xx for every recipient, 4xx at DATA
                                                    -> Transient (retry later)
    authentication refused (5xx), sender refused (5xx), TLS certificate not trusted,
    server lacks STARTTLS/AUTH/SMTPUTF8, 5xx banner -> Permanent (an operator must act)
    5xx for some or all recipients, 5xx at DATA     -> results with accepted=False: a refused
                                                       address is an answer, not an error; the
                                                       caller records it (HubSoft's per-recipient
                                                       `enviado`/`mensagem_erro`)

Sends to one server are serialised and spaced by `pause_between_sends` seconds, measured from
the end of the previous send, like HubSoft does so the server is not put on spam blacklists.
Without a pause (a relay of one's own, a provider that takes volume), up to `connections` sends
to one server run at once, each on its own connection: one at a time, every e-mail of the
process waits for the four round trips of the one before (MAIL, RCPT, DATA, the text).

With `keep_alive` > 0 a connection stays open for the next send if it comes within that many
seconds: a message then costs MAIL, RCPT and DATA, not also the TCP (and TLS) handshake, EHLO,
AUTH and QUIT. A connection that failed in any way other than an SMTP answer is not reused.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import Message
from email.utils import getaddresses
from functools import cached_property
from typing import Literal

import aiosmtplib

from notaflow.consumers.providers import mail_wire
from notaflow.emails import valid_email
from notaflow.errors import Permanent, Transient

__all__ = [
    "Mailer",
    "RecipientResult",
    "Security",
    "SmtpConfig",
    "map_smtp_error",
    "valid_email",
]

Security = Literal["none", "starttls", "tls"]


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    sender_address: str
    port: int = 25
    security: Security = "none"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    timeout: float = 30.0
    sender_name: str = ""
    pause_between_sends: float = 1.0
    validate_certs: bool = True
    # EHLO name; None asks the OS (socket.getfqdn), which can take seconds without DNS.
    local_hostname: str | None = None
    # Seconds an idle connection is kept for the next send (module docstring); 0: one
    # connection per message.
    keep_alive: float = 0.0
    # Sends to the server at once, each on its own connection, when there is no pause between
    # sends (module docstring); with a pause they are one at a time.
    connections: int = 1
    # MAIL, RCPT and DATA in one write where the server offers PIPELINING (`smtp_pipelining`).
    pipelining: bool = True

    def __post_init__(self) -> None:
        if self.security not in ("none", "starttls", "tls"):
            raise ValueError(f"security must be none, starttls or tls, not {self.security!r}")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.pause_between_sends < 0:
            raise ValueError("pause_between_sends must be >= 0")
        if self.connections < 1:
            raise ValueError("connections must be >= 1")

    @property
    def parallel(self) -> int:
        """Sends to the server at once: `connections` without a pause, else one."""
        return 1 if self.pause_between_sends > 0 else self.connections

    @cached_property  # an Address parsed per e-mail otherwise (1 % of the consumer)
    def from_header(self) -> str:
        """The `From` value: `Name <address>`, encoded on serialisation when not ASCII."""
        return str(Address(display_name=self.sender_name, addr_spec=self.sender_address))


@dataclass(frozen=True)
class RecipientResult:
    address: str
    accepted: bool
    code: int | None  # the SMTP reply code; None when refused before talking to the server
    message: str
    host: str

    @property
    def transient(self) -> bool:
        """A 4xx refusal: the same message to this address may succeed later."""
        return not self.accepted and self.code is not None and 400 <= self.code < 500


class _ServerGate:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # one send at a time, spaced by the pause
        self.last_end: float | None = None
        self._slots: dict[int, asyncio.Semaphore] = {}

    def slots(self, n: int) -> asyncio.Semaphore:
        """Up to `n` sends at once. Per n: two configurations of one server (the global one
        and a tenant's account) that allow different numbers each keep their own bound."""
        sem = self._slots.get(n)
        if sem is None:
            sem = self._slots[n] = asyncio.Semaphore(n)
        return sem


# Locks belong to one event loop, so the gates are kept per loop and per (host, port).
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], _ServerGate]]
_gates = weakref.WeakKeyDictionary()


def _gate(host: str, port: int) -> _ServerGate:
    per_loop = _gates.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault((host.lower(), port), _ServerGate())


def _header_text(value: object) -> str:
    """A stored header value as text: an `EmailMessage` header is a str, a compat32 `Header`
    decodes itself, and a compat32 str holding raw UTF-8 (an address that is not ASCII, RFC
    6532) carries its bytes surrogate-escaped."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _envelope_recipients(message: Message) -> list[str]:
    """The To, Cc and Bcc addresses, of an `EmailMessage` or a compat32 `Message`. The values
    are read as stored (`raw_items`): compat32's `get_all` turns a str with raw UTF-8 into a
    `Header` of unknown bytes. Encoded-word display names need no decoding: only the
    addresses are kept."""
    stored = list(message.raw_items())
    fields = [
        _header_text(value)
        for header in ("to", "cc", "bcc")
        for name, value in stored
        if name.lower() == header
    ]
    seen: dict[str, None] = {}
    for _name, address in getaddresses(fields):
        if address:
            seen.setdefault(address, None)
    return list(seen)


def _is_4xx(code: int) -> bool:
    return 400 <= code < 500


class Mailer:
    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        # Connections kept between sends (keep_alive), each with when it went idle; the last
        # one returned is taken first, so those left over expire.
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    async def aclose(self) -> None:
        """QUIT the kept connections, if any."""
        idle, self._idle = self._idle, []
        for client, _since in idle:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()

    async def send(
        self, message: Message, recipients: Sequence[str] | None = None
    ) -> list[RecipientResult]:
        """Send `message` to `recipients` (default: its To, Cc and Bcc addresses), one result
        per recipient in order. Raises Transient or Permanent (module docstring). `message` is
        an `EmailMessage` (flattened under `email.policy.SMTP`) or a compat32 `Message`, as the
        notification e-mails are (flattened by `mail_wire`, the cheaper)."""
        addresses = list(dict.fromkeys(recipients)) if recipients is not None else None
        if addresses is None:
            addresses = _envelope_recipients(message)
        host = self.config.host
        invalid = {a: RecipientResult(a, False, None, "invalid address", host) for a in addresses}
        deliverable = [a for a in addresses if valid_email(a)]
        for address in deliverable:
            del invalid[address]
        if not deliverable:
            return [invalid[a] for a in addresses]

        gate = _gate(self.config.host, self.config.port)
        parallel = self.config.parallel
        if parallel > 1:
            async with gate.slots(parallel):
                sent = await self._send(message, deliverable)
        else:
            async with gate.lock:
                if gate.last_end is not None:
                    wait = gate.last_end + self.config.pause_between_sends - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                try:
                    sent = await self._send(message, deliverable)
                finally:
                    gate.last_end = time.monotonic()
        return [invalid.get(a) or sent[a] for a in addresses]

    async def _connection(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connected client, taken from the kept ones (each used by one send at a time), and
        whether it is kept for the next send."""
        cfg = self.config
        while self._idle:
            kept, since = self._idle.pop()
            if kept.is_connected and time.monotonic() - since < cfg.keep_alive:
                return kept, True
            await _close(kept)
        client = self._new_client()
        await client.connect()
        return client, cfg.keep_alive > 0

    def _keep(self, client: aiosmtplib.SMTP) -> bool:
        """Keep `client` for the next send, if there is room: at most one per send at once
        (the gate bounds those, but configurations can change under a running process)."""
        if len(self._idle) >= self.config.parallel:
            return False
        self._idle.append((client, time.monotonic()))
        return True

    def _new_client(self) -> aiosmtplib.SMTP:
        cfg = self.config
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password,
            local_hostname=cfg.local_hostname,
            timeout=cfg.timeout,
            use_tls=cfg.security == "tls",
            start_tls=cfg.security == "starttls",
            validate_certs=cfg.validate_certs,
        )

    async def _send(self, message: Message, recipients: list[str]) -> dict[str, RecipientResult]:
        cfg = self.config
        try:
            client, keep = await self._connection()
            usable = False  # after a failure other than an SMTP answer, the state is unknown
            try:
                errors, reply = await mail_wire.send(
                    client, message, cfg.sender_address, recipients, pipelining=cfg.pipelining
                )
                usable = True
            except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
                usable = True  # an SMTP answer: aiosmtplib reset the envelope (RSET)
                raise
            finally:
                if not usable:
                    client.close()
                elif not (keep and client.is_connected and self._keep(client)):
                    await _close(client)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if not all(_is_4xx(r.code) for r in exc.recipients):
                return {
                    r.recipient: RecipientResult(r.recipient, False, r.code, r.message, cfg.host)
                    for r in exc.recipients
                }
            raise map_smtp_error(exc, cfg.host, cfg.port) from exc
        except aiosmtplib.SMTPDataError as exc:
            if not _is_4xx(exc.code):  # the message itself is refused, for everyone
                return {
                    a: RecipientResult(a, False, exc.code, exc.message, cfg.host)
                    for a in recipients
                }
            raise map_smtp_error(exc, cfg.host, cfg.port) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # ssl.SSLError is an OSError
            raise map_smtp_error(exc, cfg.host, cfg.port) from exc

        # aiosmtplib gives the DATA reply text only; reaching here means it was a 250.
        return {
            a: (
                RecipientResult(a, False, errors[a].code, errors[a].message, cfg.host)
                if a in errors
                else RecipientResult(a, True, 250, reply, cfg.host)
            )
            for a in recipients
        }


async def _close(client: aiosmtplib.SMTP) -> None:
    """QUIT if the connection is still up (a failing QUIT after the DATA reply is ignored, as
    aiosmtplib's context manager did), else just drop it."""
    if client.is_connected:
        try:
            await client.quit()
            return
        except (aiosmtplib.SMTPException, OSError):
            pass
    client.close()


def map_smtp_error(exc: BaseException, host: str, port: int) -> Permanent | Transient:
    """The consumer error for a foreign SMTP, socket or TLS error (see the module docstring)."""
    where = f"SMTP {host}:{port}"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if codes and all(_is_4xx(c) for c in codes):
            return Transient(f"{where} deferred every recipient: {detail}")
        return Permanent(f"{where} refused every recipient: {detail}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            what = "authentication"
        elif isinstance(exc, aiosmtplib.SMTPSenderRefused):
            what = f"sender {exc.sender}"
        elif isinstance(exc, aiosmtplib.SMTPDataError):
            what = "message"
        else:
            what = "reply"
        text = f"{where} {what}: {exc.code} {exc.message}"
        # 4xx is "try again later"; a 5xx here is configuration (credentials, sender, server).
        return Permanent(text) if exc.code >= 500 else Transient(text)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return Permanent(f"{where}: {exc.message}")
    cert_error = exc if isinstance(exc, ssl.SSLCertVerificationError) else exc.__cause__
    if isinstance(cert_error, ssl.SSLCertVerificationError):
        return Permanent(f"{where}: TLS certificate not trusted: {cert_error}")
    if type(exc) is aiosmtplib.SMTPException:
        # aiosmtplib raises the bare class for what the server lacks (STARTTLS, AUTH, XOAUTH2)
        return Permanent(f"{where}: {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPException):  # disconnected, timeouts, connect errors
        return Transient(f"{where}: {exc.message}")
    if isinstance(exc, OSError | TimeoutError):
        return Transient(f"{where}: {type(exc).__name__}: {exc}")
    return Permanent(f"{where}: unexpected {type(exc).__name__}: {exc}")
