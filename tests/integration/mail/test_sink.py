"""The SMTP sink as a client sees it: aiosmtplib over a real socket."""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import aiosmtplib
import pytest

from notaflow.launch.broker import free_port
from notaflow.sandbox.smtp_sink import SmtpSink, serve_smtp_sink


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SmtpSink]:
    async with SmtpSink(tmp_path / "outbox") as s:
        yield s


def _message(subject: str = "Olá — teste", to: str = "ana@example.com") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "nfse@example.com"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Corpo com acentuação: ç ã é\n")
    return msg


async def _send(sink: SmtpSink, msg: EmailMessage, recipients: list[str] | None = None) -> tuple:
    return await aiosmtplib.send(
        msg,
        hostname=sink.host,
        port=sink.port,
        recipients=recipients,
        local_hostname="client.test",
        start_tls=False,
        timeout=5,
    )


async def test_messages_become_sortable_eml_files(sink: SmtpSink) -> None:
    for n in range(3):
        await _send(sink, _message(f"Mensagem {n} — ç"))
    assert sink.outbox is not None
    files = sorted(sink.outbox.glob("*.eml"))
    assert len(files) == 3
    assert not list(sink.outbox.glob("*.tmp"))
    subjects = []
    for path in files:
        with path.open("rb") as fh:
            parsed = email.message_from_binary_file(fh, policy=default_policy)
        subjects.append(str(parsed["Subject"]))
        assert parsed["Return-Path"] == "<nfse@example.com>"
        assert parsed["X-Envelope-To"] == "ana@example.com"
        assert "acentuação" in parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert subjects == [f"Mensagem {n} — ç" for n in range(3)]  # names sort by arrival
    assert [r.path for r in sink.received] == files


async def test_received_keeps_the_envelope_including_bcc(sink: SmtpSink) -> None:
    await _send(sink, _message(), ["ana@example.com", "oculto@example.com"])
    [got] = await sink.wait_for(1)
    assert got.mail_from == "nfse@example.com"
    assert got.rcpt_tos == ["ana@example.com", "oculto@example.com"]
    assert got.message["Subject"] == "Olá — teste"


async def test_without_outbox_keeps_messages_in_memory_only() -> None:
    async with SmtpSink(None) as sink:
        await _send(sink, _message())
        assert sink.received[0].path is None


async def test_refuse_answers_550_to_matching_recipients_only(sink: SmtpSink) -> None:
    sink.refuse(r"^bad")
    errors, _ = await _send(sink, _message(), ["ana@example.com", "bad@example.com"])
    assert errors["bad@example.com"].code == 550
    assert sink.received[0].rcpt_tos == ["ana@example.com"]


async def test_fail_temporarily_at_rcpt_then_recovers(sink: SmtpSink) -> None:
    sink.fail_temporarily(2)
    for _ in range(2):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as info:
            await _send(sink, _message(), ["ana@example.com", "bia@example.com"])
        assert {r.code for r in info.value.recipients} == {451}
    await _send(sink, _message())
    assert len(sink.received) == 1


async def test_fail_temporarily_at_data(sink: SmtpSink) -> None:
    sink.fail_temporarily(1, at="data")
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await _send(sink, _message())
    assert info.value.code == 451
    assert sink.received == []
    await _send(sink, _message())
    assert len(sink.received) == 1


async def test_require_auth_over_plain_connection(sink: SmtpSink) -> None:
    sink.require_auth("nfse", "s3cret")
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
        await _send(sink, _message())
    assert info.value.code == 530
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await aiosmtplib.send(
            _message(),
            hostname=sink.host,
            port=sink.port,
            username="nfse",
            password="x",
            start_tls=False,
            local_hostname="client.test",
            timeout=5,
        )
    await aiosmtplib.send(
        _message(),
        hostname=sink.host,
        port=sink.port,
        username="nfse",
        password="s3cret",
        start_tls=False,
        local_hostname="client.test",
        timeout=5,
    )
    assert len(sink.received) == 1


async def test_auth_login_mechanism(sink: SmtpSink) -> None:
    sink.require_auth("nfse", "s3cret")
    client = aiosmtplib.SMTP(
        hostname=sink.host, port=sink.port, start_tls=False, local_hostname="c.test", timeout=5
    )
    async with client:
        await client.ehlo()
        await client.auth_login("nfse", "s3cret")
        await client.send_message(_message())
    assert len(sink.received) == 1


async def test_stop_closes_open_connections(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path)
    await sink.start()
    client = aiosmtplib.SMTP(
        hostname=sink.host, port=sink.port, start_tls=False, local_hostname="c.test", timeout=5
    )
    await client.connect()
    await sink.stop()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()


async def test_serve_smtp_sink_runs_until_cancelled(tmp_path: Path) -> None:
    port = free_port()
    task = asyncio.create_task(serve_smtp_sink(tmp_path, "127.0.0.1", port))
    try:
        for _ in range(100):  # until it listens
            try:
                await aiosmtplib.send(
                    _message(),
                    hostname="127.0.0.1",
                    port=port,
                    start_tls=False,
                    local_hostname="c.test",
                    timeout=5,
                )
                break
            except aiosmtplib.SMTPConnectError:
                await asyncio.sleep(0.02)
        files = await asyncio.to_thread(lambda: list(tmp_path.glob("*.eml")))
        assert len(files) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with pytest.raises(aiosmtplib.SMTPConnectError):
        await aiosmtplib.send(
            _message(),
            hostname="127.0.0.1",
            port=port,
            start_tls=False,
            timeout=1,
            local_hostname="c.test",
        )
