"""The notification e-mails' transaction pipelined where the server offers PIPELINING
(`consumers.providers.smtp_pipelining`): what arrives and what the mailer answers are what
aiosmtplib's one-command-at-a-time `sendmail` gives, for every outcome, against the sandbox's
aiosmtpd sink with and without PIPELINING and against a scripted server over a real socket for
the replies the sink never gives (a buggy 354, replies split byte by byte, garbage, silence)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from notaflow.consumers.mail_templates import NfseLinks, render_nfse_email
from notaflow.consumers.providers import smtp_pipelining
from notaflow.consumers.providers.mailer import Mailer, SmtpConfig
from notaflow.errors import Permanent, Transient
from notaflow.sandbox.smtp_sink import SmtpSink


def _config(host: str, port: int, **overrides: object) -> SmtpConfig:
    base = SmtpConfig(
        host=host,
        port=port,
        sender_address="nfse@acme.com.br",
        sender_name="ACME Notas",
        timeout=5,
        pause_between_sends=0,
        local_hostname="notaflow.test",
        keep_alive=30,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def _rendered(config: SmtpConfig, recipients: list[str], text: str = "Serviço") -> Message:
    return render_nfse_email(
        "autorizada",
        {"numero": "233", "codigo_verificacao": "DU1M-M2Y", "cnpj_prestador": "51916585000125"},
        {
            "prestador": {"cnpj": "51916585000125"},
            "tomador": {"razao_social": "José & Filhos", "cnpj": "07504505000132"},
            "servico": {"valor_servicos": "1234.56", "discriminacao": text},
        },
        NfseLinks("https://prefeitura.example/nota?n=233", "https://api.example/x.xml"),
        issuer_name="ACME LTDA",
        sender=config.from_header,
        recipients=recipients,
        message_id_domain="acme.com.br",
    )


# -- against the sandbox sink, PIPELINING offered or not ------------------------------------


def _stable(raw: bytes) -> bytes:
    """The bytes less what differs between two renderings: boundaries, Date, Message-ID."""
    raw = re.sub(rb"={15}\d+==", b"BOUNDARY", raw)
    return re.sub(rb"(?m)^(Date|Message-ID): .*\r\n", b"", raw)


Outcome = list[tuple[str, bool, int | None]] | str


def _invoice(config: SmtpConfig, to: list[str], text: str) -> EmailMessage:
    """An `EmailMessage`, as the invoice and HubSoft e-mails are: flattened by aiosmtplib."""
    msg = EmailMessage()
    msg["From"] = config.from_header
    msg["To"] = ", ".join(to)
    msg["Subject"] = "Fatura de dezembro — ACME"
    msg.set_content(text)
    msg.add_attachment(b"%PDF-1.4\n" + bytes(range(256)), "application", "pdf", filename="f.pdf")
    return msg


async def _outcome(
    sink: SmtpSink, to: list[str], text: str = "Serviço", kind: str = "compat32"
) -> Outcome:
    config = _config(sink.host, sink.port)
    mailer = Mailer(config)
    try:
        message = _rendered(config, to, text) if kind == "compat32" else _invoice(config, to, text)
        results = await mailer.send(message)
        return [(r.address, r.accepted, r.code) for r in results]
    except (Permanent, Transient) as exc:
        return type(exc).__name__
    finally:
        await mailer.aclose()


BEHAVIOURS: dict[str, tuple[Callable[[SmtpSink], None], list[str]]] = {
    "accepted": (lambda s: None, ["ana@example.com", "bia@example.com"]),
    "one refused": (lambda s: s.refuse("recusado"), ["ana@example.com", "recusado@example.com"]),
    "every one refused": (lambda s: s.refuse("example"), ["ana@example.com", "bia@example.com"]),
    "deferred at RCPT": (lambda s: s.fail_temporarily(1, "rcpt"), ["ana@example.com"]),
    "deferred at DATA": (lambda s: s.fail_temporarily(1, "data"), ["ana@example.com"]),
    "international address": (lambda s: None, ["josé@exemplo.com.br"]),
    "without AUTH": (lambda s: s.require_auth("u", "p"), ["ana@example.com"]),
}


@pytest.mark.parametrize("kind", ["compat32", "EmailMessage"])
@pytest.mark.parametrize("name", list(BEHAVIOURS))
async def test_the_outcome_and_the_bytes_are_sendmails(
    tmp_path: Path, name: str, kind: str
) -> None:
    behave, to = BEHAVIOURS[name]
    seen = []
    for pipelining in (False, True):
        async with SmtpSink(tmp_path / str(pipelining), pipelining=pipelining) as sink:
            behave(sink)
            text = "linha\n.começa com ponto\r\nCR só\r e fim."
            outcome = await _outcome(sink, to, text, kind)
            # then the same connection's next transaction is whole (the envelope was reset)
            sink.reset()
            after = await _outcome(sink, ["ana@example.com"])
            received = [(m.mail_from, m.rcpt_tos, _stable(m.raw)) for m in sink.received]
            seen.append((outcome, after, received))
    assert seen[1] == seen[0]
    assert seen[1][1] == [("ana@example.com", True, 250)]


async def test_a_kept_connection_carries_one_transaction_after_another(tmp_path: Path) -> None:
    async with SmtpSink(tmp_path) as sink:
        config = _config(sink.host, sink.port)
        mailer = Mailer(config)
        for n in range(20):
            [result] = await mailer.send(_rendered(config, [f"t{n}@example.com"]))
            assert result.accepted
        await mailer.aclose()
        assert [m.rcpt_tos for m in sink.received] == [[f"t{n}@example.com"] for n in range(20)]
        assert len({m.peer for m in sink.received}) == 1


async def test_over_starttls(tls_context: ssl.SSLContext, tmp_path: Path) -> None:
    async with SmtpSink(tmp_path, tls_context=tls_context) as sink:
        config = _config(sink.host, sink.port, security="starttls", validate_certs=False)
        mailer = Mailer(config)
        for to in ("ana@example.com", "bia@example.com"):
            [result] = await mailer.send(_rendered(config, [to]))
            assert result.accepted
        await mailer.aclose()
        assert [m.rcpt_tos for m in sink.received] == [["ana@example.com"], ["bia@example.com"]]


# -- a scripted server ----------------------------------------------------------------------


@dataclass
class Script:
    """Replies by command; `hold`: answer MAIL, RCPT and DATA only once DATA has arrived,
    which a client waiting for each reply before the next command never gets past."""

    mail: bytes = b"250 OK\r\n"
    rcpt: Callable[[bytes], bytes] = lambda line: b"250 OK\r\n"
    data: bytes = b"354 go ahead\r\n"
    done: bytes = b"250 2.0.0 queued\r\n"
    hold: bool = True
    split: bool = False  # replies written a byte at a time
    pipelining: bool = True
    received: list[bytes] = field(default_factory=list)  # every line and text, in order
    connections: int = 0


async def _serve(
    script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    script.connections += 1

    async def say(reply: bytes) -> None:
        if script.split:
            for i in range(len(reply)):
                writer.write(reply[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(reply)
            await writer.drain()

    await say(b"220 scripted ESMTP\r\n")
    held: list[bytes] = []
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while line := await reader.readline():
            script.received.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                offers = b"250-PIPELINING\r\n" if script.pipelining else b""
                await say(b"250-scripted\r\n" + offers + b"250-SIZE 1000000\r\n250 8BITMIME\r\n")
            elif verb in (b"MAIL", b"RCPT", b"DATA"):
                reply = {b"MAIL": script.mail, b"DATA": script.data}.get(verb) or script.rcpt(line)
                held.append(reply)
                if verb == b"DATA" or not (script.hold and script.pipelining):
                    await say(b"".join(held))
                    held.clear()
                if verb == b"DATA" and reply.startswith(b"354"):
                    text = b""
                    while (part := await reader.readline()) not in (b".\r\n", b""):
                        text += part
                    script.received.append(text + b".\r\n")
                    await say(script.done)
            elif verb == b"RSET":
                await say(b"250 reset\r\n")
            elif verb == b"QUIT":
                await say(b"221 bye\r\n")
                break
            else:
                await say(b"500 what\r\n")
    writer.close()


@contextlib.asynccontextmanager
async def _scripted(script: Script) -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: _serve(script, r, w), "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def _send(port: int, to: list[str], **config: object) -> Outcome:
    async with _mailer(port, **config) as send:
        return await send(to)


@contextlib.asynccontextmanager
async def _mailer(port: int, **config: object) -> AsyncIterator[Callable[[list[str]], Any]]:
    """Sends through one mailer, its connection kept between them."""
    cfg = _config("127.0.0.1", port, **config)
    mailer = Mailer(cfg)

    async def send(to: list[str]) -> Outcome:
        try:
            results = await mailer.send(_rendered(cfg, to))
            return [(r.address, r.accepted, r.code) for r in results]
        except (Permanent, Transient) as exc:
            return type(exc).__name__

    try:
        yield send
    finally:
        await mailer.aclose()


async def test_mail_rcpt_and_data_go_before_any_reply() -> None:
    script = Script()  # holds its replies until DATA: a client that waits for each times out
    async with _scripted(script) as port:
        assert await _send(port, ["ana@example.com", "bia@example.com"], timeout=2) == [
            ("ana@example.com", True, 250),
            ("bia@example.com", True, 250),
        ]
    lines = [x for x in script.received if not x.startswith(b"Content")]
    assert lines[1].startswith(b"MAIL FROM:<nfse@acme.com.br> size=")
    assert lines[2:5] == [
        b"RCPT TO:<ana@example.com>\r\n",
        b"RCPT TO:<bia@example.com>\r\n",
        b"DATA\r\n",
    ]


async def test_turned_off_it_waits_for_each_reply() -> None:
    """`NOTAFLOW_SMTP_PIPELINING=false` (`SmtpConfig.pipelining`), for a server that offers it
    and mishandles it: one command at a time, so the server that holds its replies until DATA
    is never answered and the send times out, where the pipelined one goes through."""
    from notaflow.settings import Settings

    assert Settings.from_env({"NOTAFLOW_SMTP_PIPELINING": "false"}).smtp_pipelining is False
    async with _scripted(Script()) as port:
        assert await _send(port, ["ana@example.com"], pipelining=False, timeout=1) == "Transient"
        assert await _send(port, ["ana@example.com"], timeout=1) == [("ana@example.com", True, 250)]


SCRIPTS: dict[str, tuple[Script, Outcome]] = {
    "sender refused": (
        Script(
            mail=b"550 5.7.1 not you\r\n", rcpt=lambda _: b"503 MAIL first\r\n", data=b"503 no\r\n"
        ),
        "Permanent",
    ),
    "sender deferred": (
        Script(mail=b"451 later\r\n", rcpt=lambda _: b"503 MAIL first\r\n", data=b"503 no\r\n"),
        "Transient",
    ),
    "one recipient refused, multi-line": (
        Script(
            rcpt=lambda line: (
                b"550-no such\r\n550 5.1.1 user\r\n" if b"bia" in line else b"250 OK\r\n"
            )
        ),
        [("ana@example.com", True, 250), ("bia@example.com", False, 550)],
    ),
    "every recipient refused": (
        Script(rcpt=lambda _: b"550 5.1.1 unknown\r\n", data=b"554 no valid recipients\r\n"),
        [("ana@example.com", False, 550), ("bia@example.com", False, 550)],
    ),
    "every recipient refused, yet DATA taken": (
        Script(rcpt=lambda _: b"550 5.1.1 unknown\r\n"),
        [("ana@example.com", False, 550), ("bia@example.com", False, 550)],
    ),
    "every recipient deferred": (
        Script(rcpt=lambda _: b"452 full\r\n", data=b"554 no\r\n"),
        "Transient",
    ),
    "DATA refused": (
        Script(data=b"554 5.3.4 policy\r\n"),
        [("ana@example.com", False, 554), ("bia@example.com", False, 554)],
    ),
    "text refused": (
        Script(done=b"552 5.3.4 too big\r\n"),
        [("ana@example.com", False, 552), ("bia@example.com", False, 552)],
    ),
    "text deferred": (Script(done=b"451 4.3.0 later\r\n"), "Transient"),
    "replies a byte at a time": (
        Script(split=True, rcpt=lambda _: b"250-fine\r\n250 OK\r\n"),
        [("ana@example.com", True, 250), ("bia@example.com", True, 250)],
    ),
    "garbage for a reply": (Script(mail=b"hello there\r\n"), "Transient"),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
async def test_every_reply_means_what_it_means_to_sendmail(name: str) -> None:
    script, expected = SCRIPTS[name]
    outcomes = []
    for pipelining in (True, False):
        played = replace(script, pipelining=pipelining, received=[], connections=0)
        async with _scripted(played) as port, _mailer(port) as send:
            first = await send(["ana@example.com", "bia@example.com"])
            # what follows on the same connection starts from a clean envelope
            after = await send(["ana@example.com"])
        outcomes.append((first, after, played.connections))
        if pipelining and name == "every recipient refused, yet DATA taken":
            assert played.received[5] == b".\r\n"  # the empty message that ends it
            assert played.received[6] == b"RSET\r\n"
    assert outcomes[0][0] == expected, name
    assert outcomes[0][:2] == outcomes[1][:2], name
    # One connection for both, but after a reply that is not SMTP, whose connection's state is
    # unknown: aiosmtplib tries an RSET on it, the pipelined send starts afresh.
    assert outcomes[0][2] == (2 if name == "garbage for a reply" else 1), name


async def test_a_server_gone_mid_transaction_is_transient_and_not_reused() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 x\r\n")
        await reader.readline()
        writer.write(b"250-x\r\n250 PIPELINING\r\n")
        await reader.readline()  # MAIL
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        assert await _send(port, ["ana@example.com"]) == "Transient"


async def test_a_silent_server_times_out_as_transient() -> None:
    script = Script(hold=True, data=b"")  # never answers DATA, so nothing held goes out
    script.data = b""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 x\r\n")
        await reader.readline()
        writer.write(b"250-x\r\n250 PIPELINING\r\n")
        await asyncio.sleep(10)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await _send(port, ["ana@example.com"], timeout=0.5) == "Transient"
        assert loop.time() - started < 3


# -- the pure parts -------------------------------------------------------------------------


@given(
    st.binary(max_size=300)
    | st.lists(st.sampled_from([b"a", b".", b"\n", b"\r", b"\r\n"])).map(b"".join)
)
@example(b"linha\n.ponto\n..dois\nfim")  # line ends all LF: the fast path
@example(b".primeira\n")
@example(b"sem fim de linha")
@example(b"CR\r\nmisto\rLF\n.ponto")
def test_the_text_is_what_aiosmtplib_sends(message: bytes) -> None:
    from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

    normalized = normalize_message_line_endings(message)
    text, size = smtp_pipelining.wire_text(message)
    assert text == PERIOD_REGEX.sub(b"..", normalized) + b".\r\n"
    assert size == len(normalized)


@given(st.lists(st.integers(0, 7), max_size=6))
def test_replies_are_parsed_however_they_are_split(cuts: list[int]) -> None:
    wire = b"250 OK\r\n550-no\r\n550 such user\r\n354 go\n"
    bounds = sorted({min(c * 7, len(wire)) for c in cuts})
    parser = smtp_pipelining.ReplyParser()
    replies = []
    start = 0
    for end in [*bounds, len(wire)]:
        replies += parser.feed(wire[start:end])
        start = end
    assert replies == [(250, "OK"), (550, "no\nsuch user"), (354, "go")]


def test_a_command_line_takes_no_control_character() -> None:
    for sender, to, options in [
        ("a@b.c", ["x@y.z\x00"], []),
        ("a@b.c\x00", ["x@y.z"], []),
        ("a@b.c", ["x@y.z"], ["BODY=8BITMIME\r\nRSET"]),
    ]:
        with pytest.raises(ValueError):
            smtp_pipelining.command_lines(sender, to, options, "ascii")
    assert smtp_pipelining.command_lines("a@b.c", ["x@y.z"], ["BODY=8BITMIME"], "ascii") == (
        b"MAIL FROM:<a@b.c> BODY=8BITMIME\r\nRCPT TO:<x@y.z>\r\nDATA\r\n"
    )


async def test_it_is_taken_only_where_offered(tmp_path: Path) -> None:
    async with SmtpSink(tmp_path, pipelining=False) as plain, SmtpSink(tmp_path) as offering:
        for sink, offered in ((plain, False), (offering, True)):
            async with aiosmtplib.SMTP(hostname=sink.host, port=sink.port) as probe:
                await probe.ehlo()
                assert probe.supports_extension("pipelining") is offered


def test_under_uvloop_as_in_production(tls_context: ssl.SSLContext) -> None:
    """The consumers run uvloop, whose transports (plain and TLS) are not asyncio's: lent to
    the replies and given back, over STARTTLS, implicit TLS and plain, with a message large
    enough for the transport to pause writing, and a refusal between sends."""
    import uvloop

    async def sends() -> list[tuple[str, int, int]]:
        seen = []
        for security, implicit in (("starttls", False), ("tls", True), ("none", False)):
            context = None if security == "none" else tls_context
            async with SmtpSink(None, tls_context=context, implicit_tls=implicit) as sink:
                cfg = _config(sink.host, sink.port, security=security, validate_certs=False)
                mailer = Mailer(cfg)
                for n in range(3):
                    [sent] = await mailer.send(_rendered(cfg, [f"t{n}@example.com"]))
                    assert sent.accepted
                [big] = await mailer.send(_invoice(cfg, ["b@example.com"], "x" * 2_000_000))
                sink.refuse("recusado")
                after = await mailer.send(
                    _rendered(cfg, ["recusado@example.com", "ok@example.com"])
                )
                await mailer.aclose()
                assert big.accepted and [r.accepted for r in after] == [False, True]
                assert len(sink.received[3].raw) > 2_000_000
                seen.append((security, len(sink.received), len({m.peer for m in sink.received})))
        return seen

    assert uvloop.run(sends()) == [("starttls", 5, 1), ("tls", 5, 1), ("none", 5, 1)]


def test_a_reply_is_bounded_as_aiosmtplib_bounds_it() -> None:
    from aiosmtplib.protocol import MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH

    with pytest.raises(aiosmtplib.SMTPResponseException, match="too long"):
        smtp_pipelining.ReplyParser().feed(b"250 " + b"x" * MAX_LINE_LENGTH + b"\r\n")
    endless = smtp_pipelining.ReplyParser()
    line = b"250-" + b"x" * 1000 + b"\r\n"
    with pytest.raises(aiosmtplib.SMTPResponseException, match="too long"):
        for _ in range(MAX_RESPONSE_LENGTH // len(line) + 1):
            endless.feed(line)
    # a long reply under the bound is read whole
    fine = smtp_pipelining.ReplyParser().feed(line * 20 + b"250 end\r\n")
    assert [r.code for r in fine] == [250] and fine[0].message.count("\n") == 20
