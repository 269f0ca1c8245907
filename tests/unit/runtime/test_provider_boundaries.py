"""Each provider adapter translates its library's exceptions into the error tree in one place
(`map_httpx_errors` for Focus, `map_wire_errors` for Emites; SMTP's `map_smtp_error` is tested
in tests/mail): every foreign error of the library has a row, anything else goes on untouched,
and the class says what a retry may do."""

from __future__ import annotations

import inspect

import httpx
import pytest

from notaflow.consumers.providers.emites import CANCEL, CREATE, map_wire_errors
from notaflow.consumers.providers.focus import HTTPX_ERRORS, map_httpx_errors
from notaflow.emites_wire import PayloadNotEncodable
from notaflow.errors import Permanent, Transient, Unsent

HTTPX = sorted(
    (c for _, c in inspect.getmembers(httpx, inspect.isclass) if issubclass(c, httpx.HTTPError)),
    key=lambda c: c.__name__,
)


def test_httpx_exports_errors_and_the_table_covers_their_root() -> None:
    assert len(HTTPX) > 10  # ConnectError, ReadTimeout, ... (guards against an empty walk)
    assert any(foreign is httpx.HTTPError for foreign, _, _ in HTTPX_ERRORS)


@pytest.mark.parametrize("foreign", HTTPX, ids=lambda c: c.__name__)
def test_every_httpx_error_becomes_a_transient_naming_the_call(
    foreign: type[httpx.HTTPError],
) -> None:
    request = httpx.Request("GET", "https://focus.test/v2/nfse/r1")
    error = (
        foreign("boom")  # the root class takes the message only
        if foreign is httpx.HTTPError
        else foreign("boom", request=request, response=httpx.Response(500))  # type: ignore[call-arg]
        if foreign is httpx.HTTPStatusError
        else foreign("boom", request=request)  # type: ignore[call-arg]
    )
    with pytest.raises(Transient) as info, map_httpx_errors("Focus GET /v2/nfse/r1"):
        raise error
    assert info.value.__cause__ is error
    assert not isinstance(info.value, Unsent)  # a request may have reached Focus
    timeout = issubclass(foreign, httpx.TimeoutException)
    expected = "Focus GET /v2/nfse/r1: " + ("timeout" if timeout else repr(error))
    assert str(info.value) == expected


def test_foreign_errors_of_other_libraries_pass_through_the_focus_boundary() -> None:
    with pytest.raises(KeyError), map_httpx_errors("Focus GET /x"):
        raise KeyError("ours")
    with map_httpx_errors("Focus GET /x"):
        pass  # and nothing happens without an error


LABEL = "Emites 127.0.0.1:1"


def test_a_payload_the_wire_cannot_carry_is_permanent_and_names_the_field() -> None:
    with pytest.raises(Permanent) as info, map_wire_errors(LABEL, "encode", CREATE, 0):
        raise PayloadNotEncodable("produtos.0.descricao", "'€' is not ISO-8859-1")
    assert str(info.value) == (
        f"{LABEL}: cannot send CREATE_NFCE, field 'produtos.0.descricao': '€' is not ISO-8859-1"
    )


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (TimeoutError(), f"{LABEL}: cannot connect within 5 s; retry may help"),
        (
            ConnectionRefusedError(111, "Connection refused"),
            f"{LABEL}: cannot connect (Connection refused); retry may help",
        ),
        (OSError("no route"), f"{LABEL}: cannot connect (no route); retry may help"),
    ],
)
def test_nothing_sent_before_the_connection_is_unsent(error: OSError, text: str) -> None:
    with pytest.raises(Unsent) as info, map_wire_errors(LABEL, "connect", "", 5.0):
        raise error
    assert str(info.value) == text


def test_an_answer_that_never_came_is_transient_not_unsent() -> None:
    """After the request left, a retry may repeat it: never Unsent, and for a CREATE the
    message warns that the note may have been issued."""
    for identifier, warned in ((CREATE, True), (CANCEL, False)):
        with pytest.raises(Transient) as info, map_wire_errors(LABEL, "exchange", identifier, 0.3):
            raise TimeoutError
        assert not isinstance(info.value, Unsent)
        assert f"{identifier} got no answer within 0.3 s" in str(info.value)
        assert ("may still have issued it" in str(info.value)) is warned


def test_other_errors_pass_through_the_emites_boundary() -> None:
    with pytest.raises(ConnectionResetError), map_wire_errors(LABEL, "exchange", CREATE, 1):
        raise ConnectionResetError  # the connection's own callbacks turn these into Transient
    with pytest.raises(ValueError), map_wire_errors(LABEL, "connect", "", 1):
        raise ValueError("not a socket error")
