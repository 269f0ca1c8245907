"""A mail transaction pipelined as RFC 2920 allows, on a connection aiosmtplib opened.

aiosmtplib has no PIPELINING: it sends MAIL, each RCPT, DATA and the text one at a time, each
after the reply to the one before, four round trips for an e-mail to one address, each a
future, a timer and a resumed coroutine chain. Where the server offers PIPELINING (Postfix,
Exim, Exchange, Gmail, SES and the other providers do), MAIL, the RCPTs and DATA go in one
write and the text, after DATA's 354, in a second: two round trips. Against an aiosmtpd server
in its own process, four kept connections, the client's CPU per e-mail in four alternated
rounds: 407-712 µs through `sendmail`, 238-391 here (`bin/bench pipeline` gives the consumer's
figure).

aiosmtplib still does everything else on the connection (connect, TLS, EHLO, AUTH, RSET,
QUIT); for the transaction its transport is lent to `_Replies`, which reads the replies, and
given back. The commands are the ones aiosmtplib writes (its address quoting, SIZE counted as
it counts it), the text is dot-stuffed and CRLF-terminated as it does, and the outcomes are its
exceptions with its meaning (`SMTPSenderRefused`, `SMTPRecipientsRefused`, `SMTPDataError`,
`SMTPServerDisconnected`, `SMTPReadTimeoutError`), the envelope reset after a refusal, so the
mailer maps them as before. The parsing and the judging of replies are pure functions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import cast

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.email import quote_address

# aiosmtplib's own rules, so that what goes out and what is refused are its: a reply's bounds,
# the text's line ends and dot-stuffing, the characters no command line may carry.
from aiosmtplib.protocol import (
    COMMAND_INJECTION_REGEX,
    MAX_LINE_LENGTH,
    MAX_RESPONSE_LENGTH,
    PERIOD_REGEX,
    normalize_message_line_endings,
)

__all__ = ["ReplyParser", "command_lines", "send", "wire_text"]


def wire_text(message: bytes) -> tuple[bytes, int]:
    """The text as DATA carries it (CRLF line ends, leading dots doubled, ended by `.`), and
    its size for SIZE as aiosmtplib counts it (CRLF line ends, before the dots)."""
    if b"\r" in message:
        text = normalize_message_line_endings(message)
    else:  # every line end a bare LF, as `mail_wire.flatten` writes them: the same, in C
        text = message.replace(b"\n", b"\r\n")
        if not text.endswith(b"\r\n"):
            text += b"\r\n"
    size = len(text)
    if text.startswith(b".") or b"\n." in text:  # the regex pass only when it has work
        text = PERIOD_REGEX.sub(b"..", text)
    return text + b".\r\n", size


def command_lines(
    sender: str, recipients: Sequence[str], mail_options: Sequence[str], encoding: str
) -> bytes:
    """MAIL, one RCPT per recipient and DATA, as aiosmtplib writes each. ValueError for an
    address or option that cannot go on a command line."""
    lines = [
        b" ".join(
            [b"MAIL", b"FROM:" + quote_address(sender).encode(encoding)]
            + [o.encode("ascii") for o in mail_options]
        )
    ]
    lines += [b"RCPT TO:" + quote_address(r).encode(encoding) for r in recipients]
    for line in lines:
        if COMMAND_INJECTION_REGEX.search(line):
            raise ValueError("Command arg contains a prohibited control character")
    lines.append(b"DATA")
    return b"\r\n".join(lines) + b"\r\n"


class ReplyParser:
    """Replies from the bytes as they arrive, however they are split."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []

    def feed(self, data: bytes) -> list[SMTPResponse]:
        """The replies `data` completes. SMTPResponseException for a malformed or oversized
        one, as aiosmtplib raises."""
        self._buffer += data
        replies = []
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if len(line) > MAX_LINE_LENGTH:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            try:
                int(line[:3])
            except ValueError:
                shown = line.decode("utf-8", errors="ignore")
                raise aiosmtplib.SMTPResponseException(
                    -1, f"Malformed SMTP response line: {shown}"
                ) from None
            self._lines.append(line)
            if line[3:4] != b"-":
                lines, self._lines = self._lines, []
                joined = b"\n".join(x[4:].strip(b" \t\r\n") for x in lines)
                # the last line's code, as aiosmtplib reads a reply
                replies.append(
                    SMTPResponse(int(line[:3]), joined.decode("utf-8", "surrogateescape"))
                )
        if len(self._buffer) + sum(map(len, self._lines)) > MAX_RESPONSE_LENGTH:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        return replies


def judge_envelope(
    sender: str, recipients: Sequence[str], replies: Sequence[SMTPResponse]
) -> dict[str, SMTPResponse]:
    """The refused recipients, from the replies to MAIL, each RCPT and DATA, or the exception
    `sendmail` raises for them: the sender refused, every recipient refused, DATA refused."""
    mail, rcpts, data = replies[0], replies[1:-1], replies[-1]
    if mail.code != 250:
        raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender)
    refused = {
        r: reply for r, reply in zip(recipients, rcpts, strict=True) if reply.code not in (250, 251)
    }
    if len(refused) == len(recipients):
        raise aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(x.code, x.message, r) for r, x in refused.items()]
        )
    if data.code != 354:
        raise aiosmtplib.SMTPDataError(data.code, data.message)
    return refused


class _Replies(asyncio.Protocol):
    """The transport's protocol during a transaction: hands over the replies, and tells the
    lender's protocol of what concerns the connection (its loss, flow control)."""

    def __init__(self, lender: asyncio.BaseProtocol) -> None:
        self._lender = lender
        self._parser = ReplyParser()
        self._ready: list[SMTPResponse] = []
        self._failure: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0

    async def take(self, count: int, timeout: float | None) -> list[SMTPResponse]:
        self._wanted = count
        if len(self._ready) < count and self._failure is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError as exc:
                raise aiosmtplib.SMTPReadTimeoutError(
                    "Timed out waiting for server response"
                ) from exc
            finally:
                self._waiter = None
        if self._failure is not None:
            raise self._failure
        taken, self._ready = self._ready[:count], self._ready[count:]
        return taken

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return
        try:
            self._ready += self._parser.feed(data)
        except aiosmtplib.SMTPResponseException as exc:
            self._failure = exc
        if self._failure is not None or len(self._ready) >= self._wanted:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))
        self._lender.connection_lost(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._wake()

    def pause_writing(self) -> None:
        self._lender.pause_writing()

    def resume_writing(self) -> None:
        self._lender.resume_writing()


async def send(
    client: aiosmtplib.SMTP,
    message: bytes,
    sender: str,
    recipients: Sequence[str],
    mail_options: Sequence[str],
) -> tuple[dict[str, SMTPResponse], str]:
    """`client.sendmail(sender, recipients, message, mail_options=mail_options)`, pipelined:
    for a connected client whose server offers PIPELINING, EHLO done."""
    options = list(mail_options)
    encoding = "utf-8" if any(o.lower() == "smtputf8" for o in options) else "ascii"
    text, size = wire_text(message)
    if client.supports_extension("size"):
        options.insert(0, f"size={size}")
    commands = command_lines(sender, recipients, options, encoding)
    lender = client.protocol
    if not client.is_connected or client.transport is None or lender is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    transport = cast(asyncio.Transport, client.transport)
    replies = _Replies(lender)
    transport.set_protocol(replies)
    timeout = client.timeout
    answered = False  # every reply read: the connection can take an RSET
    try:
        transport.write(commands)
        envelope = await replies.take(len(recipients) + 2, timeout)
        try:
            refused = judge_envelope(sender, recipients, envelope)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            if envelope[-1].code == 354:  # DATA taken though nothing else was: end it empty
                transport.write(b".\r\n")
                await replies.take(1, timeout)
            answered = True
            raise
        transport.write(text)
        (done,) = await replies.take(1, timeout)
        answered = True
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)
        return refused, done.message
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
        if answered:
            transport.set_protocol(lender)
            with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
                await client.rset()  # as sendmail does
        else:  # a malformed reply: the state of the connection is unknown
            client.close()
        raise
    except BaseException:
        client.close()  # timed out, lost, cancelled: replies may still be on their way
        raise
    finally:
        if not transport.is_closing():
            transport.set_protocol(lender)
