"""The SMTP mailer against a real aiosmtpd sink on a free port."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from email.header import Header
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from notaflow.consumers.mail_templates import NfseLinks, render_nfce_email, render_nfse_email
from notaflow.consumers.providers.mailer import (
    Mailer,
    RecipientResult,
    SmtpConfig,
    _envelope_recipients,
    map_smtp_error,
    valid_email,
)
from notaflow.errors import NotaflowError, Permanent, Transient
from notaflow.launch.broker import free_port
from notaflow.sandbox.smtp_sink import SmtpSink


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SmtpSink]:
    async with SmtpSink(tmp_path / "outbox") as s:
        yield s


def _config(sink: SmtpSink, **overrides: object) -> SmtpConfig:
    base = SmtpConfig(
        host=sink.host,
        port=sink.port,
        sender_address="nfse@acme.com.br",
        sender_name="ACME Notas",
        timeout=5,
        pause_between_sends=0,
        local_hostname="notaflow.test",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def _message(*to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ACME Notas <nfse@acme.com.br>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = "teste"
    msg.set_content("olá\n")
    return msg


async def test_partial_refusal_is_a_result_not_an_error(sink: SmtpSink) -> None:
    sink.refuse("recusado")
    to = ["ana@example.com", "recusado@example.com", "bia@example.com"]
    results = await Mailer(_config(sink)).send(_message(*to))
    assert [r.address for r in results] == to
    assert [r.accepted for r in results] == [True, False, True]
    refused = results[1]
    assert refused.code == 550 and "rejected" in refused.message
    assert not refused.transient
    assert all(r.host == sink.host for r in results)
    assert results[0].code == 250
    assert sink.received[0].rcpt_tos == ["ana@example.com", "bia@example.com"]


async def test_every_recipient_5xx_gives_all_refused_results(sink: SmtpSink) -> None:
    sink.refuse(".")
    results = await Mailer(_config(sink)).send(_message("a@example.com", "b@example.com"))
    assert [(r.accepted, r.code) for r in results] == [(False, 550), (False, 550)]
    assert sink.received == []


async def test_invalid_address_is_refused_without_aborting_the_others(sink: SmtpSink) -> None:
    msg = _message("ana@example.com")
    results = await Mailer(_config(sink)).send(msg, ["ana@example.com", "não é e-mail"])
    assert results[0].accepted
    assert results[1] == RecipientResult("não é e-mail", False, None, "invalid address", sink.host)
    only_invalid = await Mailer(_config(sink)).send(msg, ["@@"])
    assert [r.accepted for r in only_invalid] == [False]
    assert len(sink.received) == 1


@pytest.mark.parametrize("at", ["rcpt", "data"])
async def test_temporary_failure_is_transient(sink: SmtpSink, at: str) -> None:
    sink.fail_temporarily(1, at=at)  # type: ignore[arg-type]
    mailer = Mailer(_config(sink))
    with pytest.raises(Transient, match="451"):
        await mailer.send(_message("ana@example.com", "bia@example.com"))
    assert [r.accepted for r in await mailer.send(_message("ana@example.com"))] == [True]


async def test_server_down_is_transient() -> None:
    config = SmtpConfig(
        host="127.0.0.1",
        port=free_port(),
        sender_address="n@acme.com.br",
        timeout=2,
        local_hostname="notaflow.test",
    )
    with pytest.raises(Transient) as info:
        await Mailer(config).send(_message("ana@example.com"))
    assert info.value.retriable


async def test_silent_server_times_out_as_transient() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never says hello
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = SmtpConfig(
        host="127.0.0.1",
        port=port,
        sender_address="n@acme.com.br",
        timeout=0.3,
        local_hostname="notaflow.test",
    )
    try:
        started = time.monotonic()
        with pytest.raises(Transient):
            await Mailer(config).send(_message("ana@example.com"))
        assert time.monotonic() - started < 2
    finally:
        server.close()
        await server.wait_closed()


async def test_auth_ok(sink: SmtpSink) -> None:
    sink.require_auth("nfse", "s3cret")
    config = _config(sink, username="nfse", password="s3cret")
    [result] = await Mailer(config).send(_message("ana@example.com"))
    assert result.accepted


@pytest.mark.parametrize("password", ["errada", None])
async def test_auth_wrong_or_missing_is_permanent(sink: SmtpSink, password: str | None) -> None:
    sink.require_auth("nfse", "s3cret")
    username = "nfse" if password else None
    config = _config(sink, username=username, password=password)
    with pytest.raises(Permanent) as info:
        await Mailer(config).send(_message("ana@example.com"))
    assert not info.value.retriable
    assert "535" in str(info.value) or "530" in str(info.value)


async def test_starttls_with_self_signed_cert(tls_context: ssl.SSLContext, tmp_path: Path) -> None:
    async with SmtpSink(tmp_path, tls_context=tls_context) as sink:
        config = _config(sink, security="starttls", validate_certs=False)
        [result] = await Mailer(config).send(_message("ana@example.com"))
        assert result.accepted
        untrusted = _config(sink, security="starttls", validate_certs=True)
        with pytest.raises(Permanent, match="certificate"):
            await Mailer(untrusted).send(_message("ana@example.com"))
        assert len(sink.received) == 1


async def test_starttls_demanded_but_not_offered_is_permanent(sink: SmtpSink) -> None:
    with pytest.raises(Permanent, match="STARTTLS"):
        await Mailer(_config(sink, security="starttls")).send(_message("ana@example.com"))


async def test_implicit_tls(tls_context: ssl.SSLContext, tmp_path: Path) -> None:
    async with SmtpSink(tmp_path, tls_context=tls_context, implicit_tls=True) as sink:
        config = _config(sink, security="tls", validate_certs=False)
        [result] = await Mailer(config).send(_message("ana@example.com"))
        assert result.accepted


async def test_sends_to_one_server_are_spaced_by_the_pause(sink: SmtpSink) -> None:
    pause = 0.25
    mailer = Mailer(_config(sink, pause_between_sends=pause))
    other = Mailer(_config(sink, pause_between_sends=pause))  # same server, another instance
    started = time.monotonic()
    await asyncio.gather(
        mailer.send(_message("a@example.com")),
        other.send(_message("b@example.com")),
        mailer.send(_message("c@example.com")),
    )
    assert time.monotonic() - started >= 2 * pause
    assert len(sink.received) == 3


async def test_keep_alive_sends_over_one_connection_until_idle(sink: SmtpSink) -> None:
    mailer = Mailer(_config(sink, keep_alive=0.5))
    sink.refuse("recusado")
    await mailer.send(_message("a@example.com"))
    # A refusal is an SMTP answer: the envelope is reset and the connection kept.
    [refused] = await mailer.send(_message("recusado@example.com"))
    assert not refused.accepted and refused.code == 550
    await mailer.send(_message("b@example.com"))
    await asyncio.sleep(0.7)  # idle past keep_alive: the next send opens a new connection
    await mailer.send(_message("c@example.com"))
    await mailer.aclose()
    peers = [m.peer for m in sink.received]
    assert [m.rcpt_tos for m in sink.received] == [["a@example.com"], ["b@example.com"],
                                                   ["c@example.com"]]  # fmt: skip
    assert peers[0] == peers[1] != peers[2]


async def test_without_keep_alive_every_message_has_its_connection(sink: SmtpSink) -> None:
    mailer = Mailer(_config(sink))
    await mailer.send(_message("a@example.com"))
    await mailer.send(_message("b@example.com"))
    assert sink.received[0].peer != sink.received[1].peer


async def test_keep_alive_does_not_reuse_a_connection_the_server_dropped(sink: SmtpSink) -> None:
    mailer = Mailer(_config(sink, keep_alive=30))
    await mailer.send(_message("a@example.com"))
    sink.fail_temporarily(1)  # 451 to the recipient: an answer, the connection stays usable
    with pytest.raises(Transient):
        await mailer.send(_message("b@example.com"))
    await mailer.send(_message("c@example.com"))
    assert sink.received[0].peer == sink.received[1].peer
    for connection in list(sink._connections):  # the server hangs up on its idle clients
        if connection.transport is not None:
            connection.transport.close()
    await asyncio.sleep(0.1)
    [result] = await mailer.send(_message("d@example.com"))
    assert result.accepted
    assert sink.received[2].peer != sink.received[1].peer
    await mailer.aclose()


async def test_the_pause_applies_per_server(sink: SmtpSink, tmp_path: Path) -> None:
    async with SmtpSink(tmp_path / "b") as sink_b:
        pause = 0.5
        a = Mailer(_config(sink, pause_between_sends=pause))
        b = Mailer(_config(sink_b, pause_between_sends=pause))
        await asyncio.gather(a.send(_message("x@example.com")), b.send(_message("y@example.com")))
        started = time.monotonic()
        await asyncio.gather(a.send(_message("x@example.com")), b.send(_message("y@example.com")))
        elapsed = time.monotonic() - started
        assert pause * 0.8 <= elapsed < 2 * pause  # both waited once, concurrently


class _HoldingSink(SmtpSink):
    """Holds every message at DATA until `release` is set, counting the sends under way;
    `reached` is set once `wanted` of them are."""

    def __init__(self, outbox: Path, wanted: int = 1) -> None:
        super().__init__(outbox)
        self.release, self.reached = asyncio.Event(), asyncio.Event()
        self.wanted = wanted
        self.under_way = self.most = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.under_way += 1
        self.most = max(self.most, self.under_way)
        if self.under_way >= self.wanted:
            self.reached.set()
        try:
            await self.release.wait()
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.under_way -= 1


async def test_without_a_pause_up_to_connections_sends_run_at_once(tmp_path: Path) -> None:
    async with _HoldingSink(tmp_path / "outbox", wanted=3) as sink:
        mailer = Mailer(_config(sink, connections=3, keep_alive=30))
        other = Mailer(_config(sink, connections=3, keep_alive=30))  # same server: same bound
        sends = [
            asyncio.create_task((mailer if i % 2 else other).send(_message(f"{i}@example.com")))
            for i in range(8)
        ]
        await asyncio.wait_for(sink.reached.wait(), 5)
        await asyncio.sleep(0.2)  # a fourth would have reached DATA by now
        assert sink.under_way == 3
        sink.release.set()
        results = await asyncio.gather(*sends)
        assert all(r.accepted for [r] in results) and len(sink.received) == 8
        assert sink.most == 3
        # Each mailer keeps the connections it opened and reuses them, the latest first.
        first = {m.peer for m in sink.received}
        for i in range(3):
            await mailer.send(_message(f"{i}@example.org"))
        assert len({m.peer for m in sink.received[8:]}) == 1
        assert sink.received[8].peer in first
        await mailer.aclose()
        await other.aclose()


async def test_with_a_pause_sends_go_one_at_a_time_whatever_the_connections(
    tmp_path: Path,
) -> None:
    async with _HoldingSink(tmp_path / "outbox") as sink:
        sink.release.set()
        mailer = Mailer(_config(sink, connections=3, pause_between_sends=0.01, keep_alive=30))
        await asyncio.gather(*(mailer.send(_message(f"{i}@example.com")) for i in range(4)))
        assert sink.most == 1 and len(sink.received) == 4
        assert len({m.peer for m in sink.received}) == 1  # one kept connection did it all
        await mailer.aclose()


def _rendered(config: SmtpConfig, recipients: list[str]) -> Message:
    return render_nfse_email(
        "autorizada",
        {"numero": "233", "codigo_verificacao": "DU1M-M2Y", "cnpj_prestador": "51916585000125"},
        {
            "prestador": {"cnpj": "51916585000125"},
            "tomador": {"razao_social": "José & Filhos", "cnpj": "07504505000132"},
            "servico": {"valor_servicos": "1234.56", "discriminacao": "Serviço"},
        },
        NfseLinks("https://prefeitura.example/nota?n=233", "https://api.example/x.xml"),
        issuer_name="ACME LTDA",
        sender=config.from_header,
        recipients=recipients,
        message_id_domain="acme.com.br",
    )


async def test_rendered_nfse_email_arrives_as_proper_mime(sink: SmtpSink) -> None:
    config = _config(sink)
    msg = _rendered(config, ["tomador@example.com"])
    [result] = await Mailer(config).send(msg)
    assert result.accepted
    got = sink.received[0].message
    assert got["Subject"] == "NFS-e nº 233 autorizada — ACME LTDA"
    assert got["Message-ID"].endswith("@acme.com.br>")
    assert got["Date"] is not None and got["Date"].datetime is not None
    assert got["From"].addresses[0].display_name == "ACME Notas"
    assert got.get_content_type() == "multipart/alternative"
    plain = got.get_body(("plain",))
    assert plain is not None and "R$ 1.234,56" in plain.get_content()
    assert "Olá, José & Filhos," in plain.get_content()
    assert sink.received[0].raw.isascii()  # 7-bit safe on the wire


async def test_rendered_email_with_encoded_names_goes_to_its_to_addresses(sink: SmtpSink) -> None:
    """No recipients given: the envelope comes from the compat32 To, whose display names are
    encoded-words; the non-ASCII sender name reaches the recipient as it was."""
    config = _config(sink, sender_name="Notas Fiscais — Ação")
    to = ["Fulâno de Tál <ana@example.com>", '"Silva, João" <bia@example.com>']
    results = await Mailer(config).send(_rendered(config, to))
    assert [(r.address, r.accepted) for r in results] == [
        ("ana@example.com", True),
        ("bia@example.com", True),
    ]
    received = sink.received[0]
    assert received.rcpt_tos == ["ana@example.com", "bia@example.com"]
    assert received.raw.isascii()
    got = received.message
    assert [(a.display_name, a.addr_spec) for a in got["To"].addresses] == [
        ("Fulâno de Tál", "ana@example.com"),
        ("Silva, João", "bia@example.com"),
    ]
    assert got["From"].addresses[0].display_name == "Notas Fiscais — Ação"


async def test_rendered_nfce_email_arrives_with_its_danfe(sink: SmtpSink) -> None:
    config = _config(sink)
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8
    msg = render_nfce_email(
        "autorizada",
        {"numero": "77", "serie": "1", "cnpj_emitente": "11222333000181"},
        {"cliente": {"nome": "Zé"}, "produtos": [{"valor_total_produto": "9.90"}]},
        issuer_name="Padaria Pão Quente",
        sender=config.from_header,
        recipients=["ze@example.com"],
        message_id_domain="acme.com.br",
        danfe=pdf,
    )
    [result] = await Mailer(config).send(msg, ["ze@example.com"])
    assert result.accepted
    got = sink.received[0].message
    assert got["Subject"] == "NFC-e nº 77 autorizada — Padaria Pão Quente"
    assert got.get_content_type() == "multipart/mixed"
    [attachment] = got.iter_attachments()
    assert attachment.get_filename() == "NFCe-77.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == pdf
    assert sink.received[0].raw.isascii()


async def test_an_international_address_is_sent_over_smtputf8(sink: SmtpSink) -> None:
    config = _config(sink)
    [result] = await Mailer(config).send(_rendered(config, ["josé@exemplo.com.br"]))
    assert result.accepted and result.address == "josé@exemplo.com.br"
    assert sink.received[0].rcpt_tos == ["josé@exemplo.com.br"]
    assert "josé@exemplo.com.br".encode() in sink.received[0].raw  # RFC 6532, as before


class _AsciiOnlySink(SmtpSink):
    """A server that offers neither SMTPUTF8 nor 8BITMIME (aiosmtpd offers 8BITMIME always;
    its EHLO hook takes it off the answer)."""

    def _protocol(self) -> Any:
        connection = super()._protocol()
        connection.enable_SMTPUTF8 = False
        return connection

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if "8BITMIME" not in r]


async def test_to_a_seven_bit_server_the_email_goes_seven_bit_and_utf8_is_refused(
    tmp_path: Path,
) -> None:
    async with _AsciiOnlySink(tmp_path / "outbox") as sink:
        async with aiosmtplib.SMTP(hostname=sink.host, port=sink.port) as probe:
            await probe.ehlo()
            assert not probe.supports_extension("8bitmime")
            assert not probe.supports_extension("smtputf8")
        config = _config(sink)
        [result] = await Mailer(config).send(_rendered(config, ["ana@example.com"]))
        assert result.accepted and sink.received[0].raw.isascii()
        assert sink.received[0].message["Subject"].startswith("NFS-e nº 233")
        with pytest.raises(Permanent):
            await Mailer(config).send(_rendered(config, ["josé@exemplo.com.br"]))
        assert len(sink.received) == 1


def test_envelope_recipients_from_a_compat32_to() -> None:
    config = SmtpConfig(host="h", sender_address="n@acme.com.br")
    msg = _rendered(config, ["Fulâno <ana@example.com>", "bia@example.com", "josé@exemplo.com.br"])
    msg["Cc"] = Header("Cecília <cec@example.com>", "utf-8")  # compat32's other header type
    assert _envelope_recipients(msg) == [
        "ana@example.com",
        "bia@example.com",
        "josé@exemplo.com.br",
        "cec@example.com",
    ]
    assert _envelope_recipients(_message("ana@example.com", "Zé <ze@example.com>")) == [
        "ana@example.com",
        "ze@example.com",
    ]  # an EmailMessage still (the billing e-mails)


def test_valid_email() -> None:
    assert valid_email("ana@example.com")
    assert valid_email("josé@exemplo.com.br")
    assert not valid_email("ana@")
    assert not valid_email("ana example.com")
    assert not valid_email("")


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SmtpConfig(host="h", sender_address="a@b.c", security="ssl")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SmtpConfig(host="h", sender_address="a@b.c", username="u")
    assert SmtpConfig(host="h", sender_address="a@b.c").pause_between_sends == 1.0
    with pytest.raises(ValueError):
        SmtpConfig(host="h", sender_address="a@b.c", connections=0)


# One instance of every aiosmtplib error: a new one in a later release fails the test below
# until it is added here (and map_smtp_error is checked for it).
_REFUSED = aiosmtplib.SMTPRecipientRefused(550, "no", "a@b.c")
_SAMPLES: dict[type[Exception], Callable[[], Exception]] = {
    aiosmtplib.SMTPException: lambda: aiosmtplib.SMTPException("x"),
    aiosmtplib.SMTPServerDisconnected: lambda: aiosmtplib.SMTPServerDisconnected("x"),
    aiosmtplib.SMTPConnectError: lambda: aiosmtplib.SMTPConnectError("x"),
    aiosmtplib.SMTPTimeoutError: lambda: aiosmtplib.SMTPTimeoutError("x"),
    aiosmtplib.SMTPConnectTimeoutError: lambda: aiosmtplib.SMTPConnectTimeoutError("x"),
    aiosmtplib.SMTPReadTimeoutError: lambda: aiosmtplib.SMTPReadTimeoutError("x"),
    aiosmtplib.SMTPNotSupported: lambda: aiosmtplib.SMTPNotSupported("x"),
    aiosmtplib.SMTPResponseException: lambda: aiosmtplib.SMTPResponseException(421, "x"),
    aiosmtplib.SMTPConnectResponseError: lambda: aiosmtplib.SMTPConnectResponseError(421, "x"),
    aiosmtplib.SMTPHeloError: lambda: aiosmtplib.SMTPHeloError(501, "x"),
    aiosmtplib.SMTPDataError: lambda: aiosmtplib.SMTPDataError(451, "x"),
    aiosmtplib.SMTPAuthenticationError: lambda: aiosmtplib.SMTPAuthenticationError(535, "x"),
    aiosmtplib.SMTPSenderRefused: lambda: aiosmtplib.SMTPSenderRefused(550, "x", "a@b.c"),
    aiosmtplib.SMTPRecipientRefused: lambda: _REFUSED,
    aiosmtplib.SMTPRecipientsRefused: lambda: aiosmtplib.SMTPRecipientsRefused([_REFUSED]),
}


def test_every_aiosmtplib_error_has_a_mapping() -> None:
    exported = {
        obj
        for _, obj in inspect.getmembers(aiosmtplib, inspect.isclass)
        if issubclass(obj, aiosmtplib.SMTPException)
    }
    assert exported == set(_SAMPLES)
    for cls, make in _SAMPLES.items():
        mapped = map_smtp_error(make(), "smtp.example", 25)
        assert isinstance(mapped, (Permanent, Transient)), cls


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (aiosmtplib.SMTPConnectError("refused"), Transient),
        (aiosmtplib.SMTPReadTimeoutError("slow"), Transient),
        (aiosmtplib.SMTPServerDisconnected("gone"), Transient),
        (ConnectionResetError("reset"), Transient),
        (aiosmtplib.SMTPConnectResponseError(421, "busy"), Transient),
        (aiosmtplib.SMTPConnectResponseError(554, "go away"), Permanent),
        (aiosmtplib.SMTPAuthenticationError(454, "try later"), Transient),
        (aiosmtplib.SMTPAuthenticationError(535, "bad"), Permanent),
        (aiosmtplib.SMTPSenderRefused(553, "not yours", "n@acme"), Permanent),
        (aiosmtplib.SMTPNotSupported("no SMTPUTF8"), Permanent),
        (aiosmtplib.SMTPException("SMTP AUTH extension not supported"), Permanent),
        (ssl.SSLCertVerificationError("self-signed"), Permanent),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(450, "busy", "a@b.c")]
            ),
            Transient,
        ),
    ],
)
def test_error_mapping(exc: Exception, expected: type[NotaflowError]) -> None:
    assert type(map_smtp_error(exc, "smtp.example", 25)) is expected
