"""A message as SMTP carries it: its bytes and its MAIL options, as aiosmtplib's
`send_message` makes them, less, for a compat32 message, the refolding of headers that come
folded already. An `EmailMessage` is flattened by aiosmtplib's own `flatten_message`.

aiosmtplib flattens a compat32 `Message` under compat32, whose `fold_binary` runs every header
through `email.header.Header` to fold it again: twelve headers per notification e-mail, most of
its 0.20 ms of flattening (0.08 ms here). The notification e-mails' headers are written folded
(`mail_templates`), and compat32's folding gives back a value that already fits as it is: the
policy here writes such a value directly and hands every other one to compat32. The bytes are
aiosmtplib's, byte for byte (tests hold them to it, for the rendered e-mails and for random
header values); so are the options. `send` then pipelines the transaction where the server
offers PIPELINING (`smtp_pipelining`), or hands it to aiosmtplib's `sendmail`.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable, Sequence
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.policy import Compat32, compat32

import aiosmtplib
from aiosmtplib.email import flatten_message

from notaflow.consumers.providers import smtp_pipelining

__all__ = ["flatten", "mail_options", "send"]

# compat32's `max_line_length`: a line its folding leaves alone fits in it, the header's name
# and ": " counted on the first line.
_LINE = 78
# What compat32's folding writes unchanged when the lines fit: printable ASCII, each
# continuation line indented by spaces or tabs, no line empty or ending in whitespace (it
# trims those).
_FOLDED = re.compile(r"[!-~](?:[ -~]*[!-~])?(?:\n[ \t]+[!-~](?:[ -~]*[!-~])?)*")


class _Prefolded(Compat32):
    def fold_binary(self, name: str, value: str) -> bytes:
        if isinstance(value, str) and _FOLDED.fullmatch(value):
            lines = value.split("\n")
            if len(name) + 2 + len(lines[0]) <= _LINE and all(len(x) <= _LINE for x in lines):
                return f"{name}: {self.linesep.join(lines)}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


# As aiosmtplib clones compat32 for the flattening: "\n" line ends (its `data` makes them
# CRLF), and headers with 8-bit bytes written as they are only when the body may be 8-bit.
_EIGHT_BIT = _Prefolded()
_SEVEN_BIT = _Prefolded(cte_type="7bit")
assert _EIGHT_BIT.linesep == compat32.linesep and _EIGHT_BIT.mangle_from_ == compat32.mangle_from_


def flatten(message: Message, eight_bit: bool) -> bytes:
    """`message`'s bytes, as aiosmtplib's `flatten_message` makes them for a compat32 message
    (`cte_type` "8bit" or "7bit"), without its Bcc and Resent-Bcc."""
    if "Bcc" in message or "Resent-Bcc" in message:
        message = copy.copy(message)
        del message["Bcc"]
        del message["Resent-Bcc"]
    with io.BytesIO() as out:
        BytesGenerator(out, policy=_EIGHT_BIT if eight_bit else _SEVEN_BIT).flatten(message)
        return out.getvalue()


def mail_options(
    sender: str, recipients: Sequence[str], supports: Callable[[str], bool]
) -> tuple[list[str], bool]:
    """The MAIL options and whether the body may be 8-bit, as `send_message` chooses them:
    SMTPUTF8 when an address is not ASCII (SMTPNotSupported where the server lacks it), and
    BODY=8BITMIME where the server offers it."""
    options: list[str] = []
    if not (sender.isascii() and all(r.isascii() for r in recipients)):
        if not supports("smtputf8"):
            raise aiosmtplib.SMTPNotSupported(
                "An address containing non-ASCII characters was provided, but SMTPUTF8 is not "
                "supported by this server"
            )
        options.append("SMTPUTF8")
    eight_bit = supports("8bitmime")
    if eight_bit:
        options.append("BODY=8BITMIME")
    return options, eight_bit


async def send(
    client: aiosmtplib.SMTP,
    message: Message,
    sender: str,
    recipients: Sequence[str],
    *,
    pipelining: bool = True,
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    """`client.send_message(message, sender=sender, recipients=recipients)`: a compat32
    message flattened here, an `EmailMessage` as aiosmtplib flattens it; the transaction
    pipelined (`smtp_pipelining`) where the server offers it, unless `pipelining` is off."""
    if client.is_ehlo_or_helo_needed:  # the options depend on what EHLO offers
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            if not client.is_connected:
                raise
            await client.helo()
    options, eight_bit = mail_options(sender, recipients, client.supports_extension)
    if isinstance(message, EmailMessage):
        data = flatten_message(
            message, utf8="SMTPUTF8" in options, cte_type="8bit" if eight_bit else "7bit"
        )
    else:
        data = flatten(message, eight_bit)
    if pipelining and client.supports_extension("pipelining"):  # two round trips, not four
        return await smtp_pipelining.send(client, data, sender, recipients, options)
    return await client.sendmail(sender, list(recipients), data, mail_options=options)
