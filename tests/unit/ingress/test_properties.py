"""Hostile input (issue 6, proof 6), the pure half: properties of the framing and validation
functions every request and record goes through. Whatever arrives, each raises only its own
documented error (never a ValueError, KeyError, InvalidOperation ... that the ingress would
answer with a 500 or a consumer would choke on), and what is valid survives the trip.

Not repeated here: NFS-e/NFC-e `normalize_*` on arbitrary JSON values (tests/unit/nfse/
test_nfse_validation.py, tests/unit/nfce/test_nfce_validation.py) and the Emites wire framing
(tests/unit/nfce/test_wire.py). Here they get raw *bytes*, as the ingress reads them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import itertools
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request

from notaflow import billing as b
from notaflow.emails import valid_email
from notaflow.envelope import Event, decode
from notaflow.errors import InvalidDocument
from notaflow.ingress.auth import _basic_user
from notaflow.ingress.body import BodyNotJson, BodyTooLarge, read_json
from notaflow.ingress.dialects import FinanceiroError, HubsoftError, WuroError
from notaflow.ingress.focus_hooks import _valid_url
from notaflow.ingress.hubsoft import _nota_id
from notaflow.ingress.hubsoft_financeiro import parse_query
from notaflow.ingress.wuro import _bool, _email, _text
from notaflow.nfce import normalize_nfce, validate_motivo
from notaflow.nfse import normalize_nfse, validate_justificativa, validate_ref
from testkit.nfce_documents import valid_nfce
from testkit.seed_examples import JSON_EXAMPLE, with_valid_cnpjs
from tests.unit.nfse.test_nfse_validation import valid_documents

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Everything JSON can carry, with the edges orjson meets: big and negative integers, floats
# of every size, Unicode (no lone surrogates: orjson refuses those while parsing).
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["", "0", "1", "²", "١٢", "1e999", "-0", " 12 ", "null", "true", "\x00"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=15,
)
header_text = st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60)


# --- CloudEvents envelope (every record a consumer reads) ---------------------------------

ce_names = st.sampled_from(
    ["ce_id", "ce_type", "ce_source", "ce_specversion", "ce_subject", "ce_tenant", "ce_time",
     "traceparent", "content-type"]
) | st.text(max_size=12)  # fmt: skip
ce_values = st.none() | st.binary(max_size=20) | st.sampled_from([b"1.0", b"0.3", b"x", b""])


@given(
    headers=st.none() | st.lists(st.tuples(ce_names, ce_values), max_size=10),
    value=st.none() | st.binary(max_size=80) | json_values.map(orjson.dumps),
)
@example(headers=[("ce_id", b"\xff")], value=b"{}")
@example(headers=[("ce_id", b"1"), ("ce_type", b"t"), ("ce_source", b"s")], value=b"[1]")
def test_decoding_any_record_raises_only_invalid_document(
    headers: list[tuple[str, bytes]] | None, value: bytes | None
) -> None:
    try:
        event = decode(headers, value)
    except InvalidDocument as error:
        assert isinstance(error.field, str) and error.message
    else:
        assert event.id and event.type and event.source
        assert isinstance(event.data, dict)


ce_text = st.text(max_size=30)  # what a producer can encode (no lone surrogates)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


@given(
    type_=ce_text.filter(bool),
    source=ce_text.filter(bool),
    id_=ce_text.filter(bool),
    subject=ce_text,
    tenant=ce_text,
    traceparent=ce_text,
    time_=ce_text,
    data=json_objects,
)
def test_every_event_survives_the_wire(
    type_: str,
    source: str,
    id_: str,
    subject: str,
    tenant: str,
    traceparent: str,
    time_: str,
    data: dict[str, Any],
) -> None:
    event = Event(type=type_, source=source, data=data, subject=subject, id=id_,
                  tenant=tenant, traceparent=traceparent, time=time_)  # fmt: skip
    assert decode(event.headers(), event.value()) == event


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(valid_documents())
def test_a_valid_nfse_is_what_the_consumer_reads(raw: dict[str, Any]) -> None:
    """Accepted at the ingress, published, decoded by the consumer: the same document, still
    valid and already canonical."""
    doc = normalize_nfse(raw)
    sent = Event(type="br.notaflow.nfse.emit", source="s", data={"nfse": doc})
    received = decode(sent.headers(), sent.value()).data["nfse"]
    assert received == doc
    assert normalize_nfse(received) == doc


# --- request bodies (every POST and DELETE of every dialect) ------------------------------

LIMIT = 200


def _request(chunks: list[bytes], headers: dict[str, str]) -> Request:
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    }
    return Request(scope, receive)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:z] for a, z in itertools.pairwise(edges)]


bodies = (
    st.binary(max_size=LIMIT + 50)
    | json_values.map(orjson.dumps)
    | st.sampled_from([b"", b"  \n", b"{}", b"[]", b"null", b"\xef\xbb\xbf{}", b'{"a":1}x'])
)
content_types = st.none() | st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
     "application/xml", "APPLICATION/XML; charset=utf-8", "image/png"]
) | header_text  # fmt: skip


@given(
    body=bodies,
    cuts=st.lists(st.integers(min_value=0), max_size=4),
    content_type=content_types,
    declared=st.sampled_from(["exact", "none"]) | header_text,
    empty=st.sampled_from([None, {}]),
)
@example(body=b"{}", cuts=[], content_type=None, declared="²", empty=None)
@example(body=b"{}", cuts=[], content_type=None, declared="9" * 5000, empty=None)
def test_any_body_is_json_or_one_of_the_two_body_errors(
    body: bytes, cuts: list[int], content_type: str | None, declared: str, empty: Any
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    if declared == "exact":
        headers["content-length"] = str(len(body))
    elif declared != "none":
        headers["content-length"] = declared
    request = _request(_split(body, cuts), headers)
    try:
        parsed = asyncio.run(read_json(request, LIMIT, empty))
    except BodyTooLarge:
        said = declared.isascii() and declared.isdigit() and int(declared[-19:]) > LIMIT
        assert len(body) > LIMIT or said
    except BodyNotJson as error:
        assert error.unsupported_type == (content_type or "").lower().startswith(
            ("multipart/", "application/xml", "text/xml", "image/", "audio/", "video/")
        )
    else:
        if declared in ("exact", "none"):  # else the server would have refused the mismatch
            assert len(body) <= LIMIT
        assert parsed == (empty if not body.strip() else orjson.loads(body))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    document=st.sampled_from(["nfse", "nfce"]),
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0),
            st.sampled_from(["drop", "dup", "byte"]),
            st.binary(min_size=1, max_size=3),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mangled_document_bytes_are_refused_cleanly(
    document: str, edits: list[tuple[int, str, bytes]]
) -> None:
    """A valid document's bytes with a few bytes dropped, repeated or replaced, through the
    ingress's path: read_json, then normalize. Only the body error or InvalidDocument."""
    raw = bytearray(
        orjson.dumps(with_valid_cnpjs(JSON_EXAMPLE) if document == "nfse" else valid_nfce())
    )
    for position, how, data in edits:
        i = position % len(raw)
        if how == "drop":
            del raw[i]
        elif how == "dup":
            raw[i:i] = raw[i : i + 1]
        else:
            raw[i : i + len(data)] = data
    request = _request([bytes(raw)], {"content-type": "application/json"})
    normalize = normalize_nfse if document == "nfse" else normalize_nfce
    with contextlib.suppress(BodyNotJson, InvalidDocument):
        normalize(asyncio.run(read_json(request, 1_000_000)))


# --- credentials --------------------------------------------------------------------------


@given(st.sampled_from(["Basic ", "basic ", "BASIC ", "Bearer ", "Basic", ""]), header_text)
@example("Basic ", "\xe9t\xe9")
def test_any_authorization_header_gives_a_user_or_none(scheme: str, rest: str) -> None:
    user = _basic_user(scheme + rest)
    assert user is None or (isinstance(user, str) and user and ":" not in user)


@given(st.text(min_size=1).filter(lambda t: ":" not in t), st.text())
def test_basic_credentials_round_trip(token: str, password: str) -> None:
    encoded = base64.b64encode(f"{token}:{password}".encode()).decode()
    assert _basic_user(f"Basic {encoded}") == token


# --- the small validators of each dialect --------------------------------------------------


@given(st.none() | st.text(max_size=60) | st.sampled_from(["a" * 50, "a" * 51, "ref1", "é"]))
def test_refs_are_ascii_letters_and_digits_or_refused(ref: str | None) -> None:
    try:
        valid = validate_ref(ref)
    except InvalidDocument as error:
        assert error.field == "ref"
    else:
        assert valid == ref and valid.isascii() and valid.isalnum() and len(valid) <= 50


@given(json_values | st.fixed_dictionaries({"justificativa": json_values}))
def test_cancellation_reasons_are_checked_text_or_refused(body: Any) -> None:
    try:
        text = validate_justificativa(body)
    except InvalidDocument:
        pass
    else:
        assert text == text.strip() and 15 <= len(text) <= 255
    try:
        motivo = validate_motivo(body)
    except InvalidDocument:
        pass
    else:
        assert motivo is None or (motivo == motivo.strip() and 15 <= len(motivo) <= 255)


@given(json_values)
@example("²")
@example("\u0661")
@example(10**18)
def test_hubsoft_note_ids_are_numbers_or_a_hubsoft_error(value: Any) -> None:
    try:
        number = _nota_id(value)
    except HubsoftError as error:
        assert error.status_code == 400
    else:
        assert isinstance(number, int) and 0 <= number < 10**18


FINANCEIRO_NAMES = ("busca", "termo_busca", "limit", "apenas_pendente", "order_by", "order_type",
                    "data_inicio", "data_fim")  # fmt: skip
FINANCEIRO_VALUES = ["", "1", "50", "51", "²", "sim", "nao", "desc", "2026-02-30", "2026-01-01",
                     "cpf_cnpj", "codigo_cliente", "00.000.000/0001-91", "x" * 65]  # fmt: skip
financeiro_params = st.fixed_dictionaries(
    {},
    optional={
        name: st.sampled_from(FINANCEIRO_VALUES) | st.text(max_size=12) for name in FINANCEIRO_NAMES
    },
)


@given(financeiro_params)
@example({"busca": "codigo_cliente", "termo_busca": "1", "limit": "²"})
def test_financeiro_queries_parse_or_raise_a_hubsoft_error(params: dict[str, str]) -> None:
    try:
        query = parse_query(params)
    except FinanceiroError as error:
        assert error.status_code == 400 and error.msg
    else:
        assert 1 <= query.limit <= 50 and query.busca in ("cpf_cnpj", "codigo_cliente",
                                                          "id_cliente_servico")  # fmt: skip


@given(json_values)
def test_wuro_fields_are_values_or_a_wuro_error(value: Any) -> None:
    body = {"f": value}
    for check in (lambda: _bool(value), lambda: _email(body, "f"), lambda: _text(body, "f", 10)):
        try:
            check()
        except WuroError as error:
            assert error.status_code == 400


@given(header_text | st.text(max_size=80))
@example("http://[::1")
@example("http://a:b@c")
@example("http://a\x00b/")
def test_urls_and_emails_are_judged_never_raise(text: str) -> None:
    assert isinstance(_valid_url(text), bool)
    assert not ("\x00" in text and _valid_url(text))
    assert isinstance(valid_email(text), bool)


# --- invoice events (POST /faturas/eventos and billing.events) ----------------------------

SEED_EVENT: dict[str, Any] = {
    "event_id": "e1",
    "type": "issued",
    "occurred_at": "2026-03-01T10:00:00Z",
    "invoice": {
        "uid": "U1",
        "valor": "89.90",
        "data_emissao": "2026-03-01",
        "data_vencimento": "2026-03-10",
        "lines": [{"descricao": "Plano", "valor_unitario": 89.9, "quantidade": 1}],
        "totals": {"total": "89.90"},
        "detalhamento": {"descricao": "x", "valor": 1},
        "customer": {"cpf_cnpj": "52998224725", "codigo_cliente": 1, "email": "a@b.example"},
    },
}
EVENT_PATHS = [
    ("event_id",), ("type",), ("occurred_at",), ("sequence",), ("tenant",), ("invoice",),
    ("invoice", "uid"), ("invoice", "id_fatura"), ("invoice", "valor"), ("invoice", "state"),
    ("invoice", "data_vencimento"), ("invoice", "data_pagamento"), ("invoice", "lines"),
    ("invoice", "totals"), ("invoice", "detalhamento"), ("invoice", "customer"),
    ("invoice", "customer", "cpf_cnpj"), ("invoice", "customer", "email"),
    ("invoice", "detalhamento", "valor"), ("invoice", "totals", "total"),
]  # fmt: skip
amounts = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from(["1,5", "-0", "999999999999.99", "1e3"])
)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    path=st.sampled_from(EVENT_PATHS),
    value=json_values | amounts,
    kind=st.sampled_from(["issued", "updated", "paid", "cancelled"]),
)
@example(path=("invoice", "valor"), value=1e300, kind="issued")
@example(path=("invoice", "lines"), value=[{"descricao": "x", "quantidade": 1e20,
                                            "valor_unitario": 1e20}], kind="issued")  # fmt: skip
def test_any_value_in_an_invoice_event_is_normalized_or_invalid(
    path: tuple[str, ...], value: Any, kind: str
) -> None:
    raw = copy.deepcopy(SEED_EVENT)
    raw["type"] = kind
    holder = raw
    for part in path[:-1]:
        holder = holder[part]
    holder[path[-1]] = value
    try:
        event = b.normalize_event(raw)
    except InvalidDocument as error:
        assert error.message
    else:
        orjson.dumps(event.invoice)  # publishable and storable as it stands
        for money in (event.invoice["valor"], *event.invoice.get("totals", {}).values()):
            assert isinstance(money, str)


@given(json_values)
def test_any_json_as_an_invoice_event_is_normalized_or_invalid(raw: Any) -> None:
    with contextlib.suppress(InvalidDocument):
        b.normalize_event(raw)
