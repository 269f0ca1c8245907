"""JSON logs: one object per line, the context fields, exceptions, and no secrets."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from notaflow.logs import (
    MASK,
    JsonFormatter,
    RedactionFilter,
    configure_json_logging,
    current_context,
    deferred_log_context,
    log_context,
    redact,
    trace_id_of,
)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own with the production handler set-up, writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter("emission"))
    logger = logging.getLogger(f"tests.ops.logs.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_object_per_line_with_the_standard_fields(capture: Any) -> None:
    logger, stream = capture
    logger.info("consumer %s started", "emission")
    logger.warning("multi\nline")
    first, second = lines(stream)
    assert first["message"] == "consumer emission started"
    assert first["level"] == "INFO"
    assert first["logger"] == logger.name
    assert first["service"] == "emission"
    assert first["time"].endswith("+00:00")
    assert second["message"] == "multi\nline"


def test_context_fields_nest_and_restore(capture: Any) -> None:
    logger, stream = capture
    with log_context(tenant="acme", trace_id="4bf92f3577b34da6a3ce929d0e0e4736"):
        with log_context(ref="pedido1", event_id="e-1"):
            logger.info("inner")
        logger.info("outer")
    logger.info("none")
    inner, outer, none = lines(stream)
    assert inner["tenant"] == "acme" and inner["ref"] == "pedido1" and inner["event_id"] == "e-1"
    assert inner["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert outer["tenant"] == "acme" and "ref" not in outer
    assert not {"tenant", "ref", "event_id", "trace_id"} & none.keys()
    assert current_context() == {}


def test_a_deferred_context_is_made_once_and_only_for_a_line_logged(capture: Any) -> None:
    logger, stream = capture
    made: list[str] = []

    def fields(ref: str) -> dict[str, Any]:
        made.append(ref)
        return {"ref": ref, "event_id": f"e-{ref}", "trace_id": None}

    with log_context(tenant="acme", ref="outer"):
        with deferred_log_context(lambda: fields("quiet")):
            pass  # nothing logged: the fields are never made
        with deferred_log_context(lambda: fields("p1")):
            logger.info("first")
            with log_context(event_id="e-nested"):
                logger.info("nested")
            logger.info("second")
        logger.info("after")
    first, nested, second, after = lines(stream)
    assert made == ["p1"]
    for line in (first, second):
        assert (line["tenant"], line["ref"], line["event_id"]) == ("acme", "p1", "e-p1")
        assert "trace_id" not in line  # None removes a field, as in log_context
    assert (nested["ref"], nested["event_id"]) == ("p1", "e-nested")
    assert (after["ref"], "event_id" in after) == ("outer", False)
    assert current_context() == {}


async def test_each_task_sees_its_own_context(capture: Any) -> None:
    logger, stream = capture

    async def work(ref: str) -> None:
        with log_context(ref=ref):
            await asyncio.sleep(0.01)
            logger.info("done")

    await asyncio.gather(*(work(f"r{i}") for i in range(5)))
    assert sorted(line["ref"] for line in lines(stream)) == [f"r{i}" for i in range(5)]


def test_exceptions_are_one_string_field(capture: Any) -> None:
    logger, stream = capture
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("failed")
    (line,) = lines(stream)
    assert line["message"] == "failed"
    assert isinstance(line["exception"], str)
    assert "Traceback" in line["exception"] and "ValueError: bad value" in line["exception"]


def test_secret_fields_are_masked_anywhere(capture: Any) -> None:
    logger, stream = capture
    headers = {"Authorization": "Basic dG9rZW46", "Content-Type": "application/json"}
    with log_context(tenant="acme", api_token="tok-123"):
        logger.info(
            "calling",
            extra={
                "headers": headers,
                "smtp_password": "hunter2",
                "hook": {
                    "url": "https://x",
                    "signing_secret": "whsec_abc",
                    "nested": [{"token": 1}],
                },
            },
        )
    (line,) = lines(stream)
    text = json.dumps(line)
    for secret in ("dG9rZW46", "tok-123", "hunter2", "whsec_abc"):
        assert secret not in text
    assert line["headers"] == {"Authorization": MASK, "Content-Type": "application/json"}
    assert line["smtp_password"] == MASK
    assert line["hook"]["url"] == "https://x"
    assert line["hook"]["nested"] == [{"token": MASK}]
    assert line["api_token"] == MASK


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        ("request with Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("basic auth Basic dG9rZW46c2VjcmV0", "dG9rZW46c2VjcmV0"),
        ("dsn postgresql://u:pw@h/db password=s3cr3t&x=1", "s3cr3t"),
        ('body {"token": "t0k3n", "ref": "a"}', "t0k3n"),
        ("config secret='shh' rest", "shh"),
        ("connecting to postgresql://notaflow:pa55@db:5432/notaflow", "pa55"),
    ],
)
def test_secrets_inside_messages_are_masked(capture: Any, message: str, secret: str) -> None:
    logger, stream = capture
    logger.info("%s", message)
    (line,) = lines(stream)
    assert secret not in line["message"]
    assert MASK in line["message"]


def test_long_messages_are_cut_never_whole_documents(capture: Any) -> None:
    logger, stream = capture
    document = json.dumps({"discriminacao": "serviço " * 2000})
    logger.info("payload %s", document)
    (line,) = lines(stream)
    assert len(line["message"].encode()) < 2048 + 100
    assert line["message"].endswith("bytes]")
    assert "truncated" in line["message"]
    assert len(redact("x" * 5000)) < 2200  # extra fields are cut too


def test_a_broken_format_string_still_logs(capture: Any) -> None:
    logger, stream = capture
    logger.info("%d items", "not a number")
    (line,) = lines(stream)
    assert "items" in line["message"]


def test_trace_id_from_traceparent() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_id_of(header) == "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-xyz-1-01"):
        assert trace_id_of(bad) is None


def test_configure_json_logging_installs_one_root_handler() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("aiokafka").level)
    stream = io.StringIO()
    try:
        configure_json_logging("debug", "ingress", stream=stream)
        assert root.level == logging.DEBUG
        assert logging.getLogger("aiokafka").level == logging.WARNING
        logging.getLogger("notaflow.test").debug("hello", extra={"token": "x"})
        (line,) = lines(stream)
        assert line["service"] == "ingress" and line["message"] == "hello"
        assert line["token"] == MASK
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("aiokafka").setLevel(saved[2])
