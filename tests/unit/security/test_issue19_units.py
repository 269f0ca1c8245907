"""Issue 19's pure parts: provider URL resolution, callback checks, the auth cache's bounds, and
redaction of database errors in both log formats."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from notaflow.consumers.callback_check import foreign_note, same_outcome, xml_agrees
from notaflow.consumers.providers.urls import ForeignPath, on_provider_host, provider_path
from notaflow.ingress.auth import MAX_TOKEN_CHARS, TenantCache, basic_user, token_key
from notaflow.logs import JsonFormatter, RedactionFilter, redact_every_handler
from notaflow.store import Tenant

BASE = httpx.URL("https://api.focusnfe.com.br")
CNPJ = "51916585000125"


# -- provider URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "named",
    [
        "http://127.0.0.1:9/x.xml",
        "https://evil.test/x.xml",
        "//evil.test/x.xml",
        "https://token@api.focusnfe.com.br/x.xml",
        "http://api.focusnfe.com.br/x.xml",  # another scheme: another origin
        "https://api.focusnfe.com.br:8443/x.xml",
        "x.xml",
        "",
        "/a\\@evil.test/x",
        "/a\r\nHost: evil.test",
        "/a b",
        "javascript:alert(1)",
        "https:evil.test/x",
    ],
)
def test_paths_leaving_the_provider_host_are_refused(named: str) -> None:
    with pytest.raises(ForeignPath):
        on_provider_host(BASE, named)


@given(st.text(max_size=80))
def test_whatever_a_callback_names_the_request_goes_to_the_base_origin(named: str) -> None:
    try:
        url = on_provider_host(BASE, named)
    except ForeignPath:
        return
    assert (url.scheme, url.host, url.port, url.userinfo) == ("https", BASE.host, None, b"")


def test_relative_paths_and_same_origin_urls_are_kept() -> None:
    assert str(on_provider_host(BASE, "/notas_fiscais_servico/a.xml")) == (
        "https://api.focusnfe.com.br/notas_fiscais_servico/a.xml"
    )
    assert on_provider_host(BASE, "/\u00e9@evil.test/x").host == BASE.host
    prefixed = httpx.URL("https://focus.test/api/")
    assert on_provider_host(prefixed, "/x.xml").path == "/api/x.xml"
    assert on_provider_host(prefixed, "https://focus.test/x.xml").path == "/x.xml"


_PATH_TEXT = st.text(st.sampled_from("/.aZ09_~-%?#@:\\ é"), max_size=40)


@given(
    named=_PATH_TEXT | st.from_regex(r"(/[A-Za-z0-9._~-]{1,12}){1,5}", fullmatch=True),
    base=st.sampled_from([BASE, httpx.URL("https://focus.test/api/"), httpx.URL("http://h:8080")]),
)
def test_the_download_path_is_what_on_provider_host_resolves(named: str, base: httpx.URL) -> None:
    """`provider_path`'s shortcut for plain paths gives what the URL parsing gives, and refuses
    what it refuses."""
    try:
        expected: bytes | None = on_provider_host(base, named).raw_path
    except ForeignPath:
        expected = None
    try:
        got: bytes | None = provider_path(base, named)
    except ForeignPath:
        got = None
    assert got == expected


@pytest.mark.parametrize(
    ("named", "raw"),
    [
        ("/arquivos/51916585000125/202612/XMLsNFSe/NFSe233.xml", None),
        ("/a/./b.xml", None),  # dot segments go through the parsing
        ("/a/../b.xml", None),
        ("/a/.../b.xml", b"/a/.../b.xml"),
    ],
)
def test_plain_and_dotted_download_paths(named: str, raw: bytes | None) -> None:
    assert provider_path(BASE, named) == on_provider_host(BASE, named).raw_path
    if raw is not None:
        assert provider_path(BASE, named) == raw


# -- callback checks --------------------------------------------------------------------------

XML = (
    b'<?xml version="1.0"?><CompNfse><Nfse><InfNfse><Numero>000233</Numero>'
    b"<CodigoVerificacao>AB12-C34</CodigoVerificacao><Prestador><Cnpj>51.916.585/0001-25"
    b"</Cnpj></Prestador></InfNfse></Nfse></CompNfse>"
)


def test_a_callback_names_its_note_by_provider_ref_and_cnpj() -> None:
    body: dict[str, Any] = {"ref": "N1A1", "cnpj_prestador": CNPJ, "status": "autorizado"}
    assert foreign_note(CNPJ, "N1A1", body) == ""
    assert foreign_note(CNPJ, "N1A2", body)
    assert foreign_note("07504505000132", "N1A1", body)
    assert foreign_note(CNPJ, "N1A1", {**body, "cnpj_prestador": None})


def test_the_xml_must_carry_the_callbacks_numbers() -> None:
    body = {"numero": "233", "codigo_verificacao": "AB12C34"}
    assert xml_agrees(XML, body, CNPJ)
    assert not xml_agrees(XML, {**body, "numero": "234"}, CNPJ)
    assert not xml_agrees(XML, {**body, "codigo_verificacao": "ZZ"}, CNPJ)
    assert not xml_agrees(XML, body, "07504505000132")
    assert not xml_agrees(b"", body, CNPJ)
    assert not xml_agrees(b"<a>&bomb;</a>", body, CNPJ)
    assert not xml_agrees(XML, {"numero": "233"}, CNPJ)


def test_a_repeated_outcome_is_the_same_status_and_numbers() -> None:
    stored = {"numero": "233", "codigo_verificacao": "X"}
    claim = {"numero": "233", "codigo_verificacao": "X"}
    assert same_outcome(stored, "autorizado", "autorizado", claim)
    assert not same_outcome(stored, "autorizado", "autorizado", {**claim, "numero": "9"})
    assert not same_outcome(stored, "erro_autorizacao", "autorizado", claim)
    assert same_outcome({}, "erro_autorizacao", "erro_autorizacao", {})


# -- the auth cache's bounds -----------------------------------------------------------------


class Tenants:
    def __init__(self) -> None:
        self.queries: list[str] = []
        self.tenant = Tenant("acme", "ACME", frozenset({CNPJ}))

    async def by_token(self, token: str) -> Tenant | None:
        self.queries.append(token)
        return self.tenant if token == "good" else None


async def test_long_credentials_cost_no_query_and_keys_are_digests() -> None:
    tenants = Tenants()
    cache = TenantCache(tenants, unknown_ttl=0.0)  # type: ignore[arg-type]
    assert await cache.lookup("t" * (MAX_TOKEN_CHARS + 1)) is None
    assert tenants.queries == []
    assert await cache.lookup("good") is tenants.tenant
    assert await cache.lookup("good") is tenants.tenant
    assert tenants.queries == ["good"]
    # Unknown tokens are not kept (unknown_ttl 0 here): each is asked again, none stored.
    assert await cache.lookup("bad") is None
    assert await cache.lookup("bad") is None
    assert tenants.queries == ["good", "bad", "bad"]
    entries = cache._cache._entries
    assert list(entries) == [token_key("good")] and len(token_key("good")) == 16


def test_basic_decoding_is_cached_only_for_short_headers() -> None:
    import base64

    from notaflow.ingress import auth

    auth._basic_user.cache_clear()
    long_header = "Basic " + base64.b64encode(b"x" * 100_000 + b":").decode()
    assert basic_user(long_header) == "x" * 100_000
    assert auth._basic_user.cache_info().currsize == 0
    assert basic_user("Basic " + base64.b64encode(b"tok:").decode()) == "tok"
    assert auth._basic_user.cache_info().currsize == 1


# -- database errors in both log formats -------------------------------------------------------


SECRET = "segredo-" + "42"  # built, so a traceback's source line does not show it


def database_error() -> sa.exc.DBAPIError:
    engine = sa.create_engine("sqlite://")  # the default: parameters shown
    with engine.connect() as conn:
        try:
            conn.execute(sa.text("INSERT INTO nada VALUES (:a)"), {"a": SECRET})
        except sa.exc.DBAPIError as exc:
            return exc
    raise AssertionError("no error")


def _every_handler() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    return [h for lg in loggers for h in lg.handlers]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_database_parameters_never_reach_a_log_line(fmt: str) -> None:
    exc = database_error()
    assert "segredo-42" in str(exc)  # what the engine would say without hide_parameters
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("t") if fmt == "json" else logging.Formatter())
    logger = logging.getLogger(f"tests.issue19.{fmt}")
    logger.propagate = False
    logger.addHandler(handler)
    # redact_every_handler() reaches every handler there is, pytest's own capture handlers
    # too (they live for the session): give them back their filters afterwards, or the
    # redaction would rewrite the records later tests read through caplog.
    before = {id(h): list(h.filters) for h in _every_handler()}
    try:
        redact_every_handler()
        assert any(isinstance(f, RedactionFilter) for f in handler.filters)
        try:
            raise exc
        except sa.exc.DBAPIError:
            logger.exception("failed: %s", exc)
        logger.warning("answered 503: %r", exc)
    finally:
        logger.removeHandler(handler)
        for h in _every_handler():
            if id(h) in before:
                h.filters[:] = before[id(h)]
    out = stream.getvalue()
    assert "segredo-42" not in out
    assert "[parameters: ***]" in out
    if fmt == "json":
        assert all(json.loads(line) for line in out.splitlines() if line.startswith("{"))
