"""The CloudEvents envelope (Kafka binary mode), process settings from `NOTAFLOW_*` variables,
and the record key: the framing every process agrees on."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from notaflow.envelope import SPECVERSION, Event, decode
from notaflow.errors import ConfigurationError, InvalidDocument
from notaflow.settings import PREFIX, Settings
from notaflow.topics import Topics, document_key

# -- envelope ------------------------------------------------------------------------------


def full_event() -> Event:
    return Event(
        type="br.notaflow.nfse.emit",
        source="erp-x",
        data={"tenant": "acme", "ref": "r-1", "valor": 10.5, "itens": [1, 2], "nome": "São João"},
        subject="r-1",
        tenant="acme",
        status="autorizado",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        baggage="userId=alice,serverNode=DF%2028",
    )


def test_round_trip_keeps_every_attribute() -> None:
    event = full_event()
    assert decode(event.headers(), event.value()) == event


def test_headers_are_binary_mode_cloudevents() -> None:
    event = full_event()
    headers = dict(event.headers())
    assert headers == {
        "ce_specversion": SPECVERSION.encode(),
        "ce_id": event.id.encode(),
        "ce_type": b"br.notaflow.nfse.emit",
        "ce_source": b"erp-x",
        "ce_time": event.time.encode(),
        "ce_subject": b"r-1",
        "ce_tenant": b"acme",
        "ce_status": b"autorizado",
        "traceparent": event.traceparent.encode(),
        "tracestate": b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        "baggage": b"userId=alice,serverNode=DF%2028",
        "content-type": b"application/json",
    }
    assert orjson.loads(event.value()) == event.data


def test_optional_attributes_are_omitted_and_round_trip_empty() -> None:
    event = Event(type="t", source="s", data={})
    names = [name for name, _ in event.headers()]
    optional = {"ce_subject", "ce_tenant", "ce_status", "traceparent", "tracestate", "baggage"}
    assert not optional & set(names)
    assert decode(event.headers(), event.value()) == event


def test_trace_headers_pass_through_unchanged_while_tracing_is_off() -> None:
    """An intermediary forwards a trace it does not record: traceparent, tracestate and
    baggage reach the events a command causes as they came."""
    from notaflow import tracing

    assert not tracing.enabled()
    cause = full_event()
    assert tracing.trace_fields(cause.trace()) == cause.trace()
    effect = Event(type="t", source="s", data={}, **tracing.trace_fields(cause.trace()))
    assert decode(effect.headers(), effect.value()).trace() == cause.trace()
    assert tracing.trace_fields() == dict.fromkeys(tracing.TRACE_HEADERS, "")


def test_each_event_gets_its_own_id_and_a_time() -> None:
    a, b = Event(type="t", source="s", data={}), Event(type="t", source="s", data={})
    assert a.id != b.id
    assert a.time and a.time.endswith("+00:00")


def headers_without(name: str) -> list[tuple[str, bytes]]:
    return [(n, v) for n, v in full_event().headers() if n != name]


@pytest.mark.parametrize(
    ("headers", "value", "field"),
    [
        (headers_without("ce_id"), b"{}", "ce_id"),
        (headers_without("ce_type"), b"{}", "ce_type"),
        (headers_without("ce_source"), b"{}", "ce_source"),
        ([*headers_without("ce_id"), ("ce_id", b"")], b"{}", "ce_id"),
        (None, b"{}", "ce_id"),
        ([*full_event().headers(), ("ce_subject", b"\xff\xfe")], b"{}", "ce_subject"),
        ([*headers_without("ce_specversion"), ("ce_specversion", b"0.3")], b"{}", "ce_specversion"),
        (full_event().headers(), b"not json", "data"),
        (full_event().headers(), b"", "data"),
        (full_event().headers(), None, "data"),
        (full_event().headers(), b'[{"ref": "r-1"}]', "data"),
        (full_event().headers(), b'"a string"', "data"),
        (full_event().headers(), b"42", "data"),
    ],
    ids=[
        "missing-ce_id",
        "missing-ce_type",
        "missing-ce_source",
        "empty-ce_id",
        "no-headers",
        "non-utf8-header",
        "other-specversion",
        "non-json",
        "empty-value",
        "null-value",
        "json-array",
        "json-string",
        "json-number",
    ],
)
def test_unreadable_records_raise_invalid_document(
    headers: list[tuple[str, bytes]] | None, value: bytes | None, field: str
) -> None:
    with pytest.raises(InvalidDocument) as info:
        decode(headers, value)
    assert info.value.field == field
    assert info.value.message


def test_decode_tolerates_null_header_values_and_unknown_headers() -> None:
    event = full_event()
    headers = [*event.headers(), ("x-extra", b"whatever"), ("x-null", None)]
    assert decode(headers, event.value()) == event  # type: ignore[arg-type]


# -- settings ------------------------------------------------------------------------------


def test_from_empty_env_is_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_from_env_parses_each_type() -> None:
    settings = Settings.from_env(
        {
            "NOTAFLOW_KAFKA_BOOTSTRAP": "kafka-0:9092,kafka-1:9092",
            "NOTAFLOW_KAFKA_PARTITIONS": "12",
            "NOTAFLOW_KAFKA_IDEMPOTENCE": "false",
            "NOTAFLOW_KAFKA_PUBLISH_TIMEOUT": "2.5",
            "NOTAFLOW_CONSUMER_RETRY_BASE": "1",
            "NOTAFLOW_PORT": " 8080 ",
            "OTHER_PORT": "1",
        }
    )
    assert settings.kafka_bootstrap == "kafka-0:9092,kafka-1:9092"
    assert settings.kafka_partitions == 12
    assert settings.kafka_idempotence is False
    assert settings.kafka_publish_timeout == 2.5
    assert settings.consumer_retry_base == 1.0
    assert isinstance(settings.consumer_retry_base, float)
    assert settings.port == 8080


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_bools(raw: str, expected: bool) -> None:
    assert Settings.from_env({"NOTAFLOW_KAFKA_IDEMPOTENCE": raw}).kafka_idempotence is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("KAFKA_IDEMPOTENCE", "maybe"),
        ("KAFKA_IDEMPOTENCE", "2"),
        ("PORT", "eighty"),
        ("PORT", "80.5"),
        ("PORT", ""),
        ("KAFKA_PUBLISH_TIMEOUT", "soon"),
        ("CONSUMER_MAX_ATTEMPTS", "1e3"),
    ],
)
def test_bad_values_raise_configuration_error(name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=f"NOTAFLOW_{name}"):
        Settings.from_env({f"NOTAFLOW_{name}": raw})


def test_overrides_win_over_env_and_none_overrides_are_ignored() -> None:
    env = {"NOTAFLOW_PORT": "8080", "NOTAFLOW_HOST": "0.0.0.0"}
    settings = Settings.from_env(env, port=9000, host=None)
    assert settings.port == 9000
    assert settings.host == "0.0.0.0"


def test_env_round_trips_through_from_env() -> None:
    custom = Settings(
        kafka_bootstrap="broker:9093",
        kafka_topic_prefix="prod.",
        kafka_partitions=24,
        kafka_idempotence=False,
        kafka_publish_timeout=0.75,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_password="p@ss word=1",
        database_url="postgresql://u:p@db:5432/notaflow",
        port=8443,
        consumer_retry_max=12.5,
        log_level="DEBUG",
    )
    for settings in (Settings(), custom):
        env = settings.env()
        assert all(name.startswith(PREFIX) for name in env)
        assert Settings.from_env(env) == settings
    assert "NOTAFLOW_EXTRA" not in custom.env()


def test_env_covers_every_field() -> None:
    env = Settings().env()
    names = {f.name for f in dataclasses.fields(Settings)} - {"extra"}
    assert set(env) == {PREFIX + name.upper() for name in names}
    assert env["NOTAFLOW_KAFKA_IDEMPOTENCE"] == "true"


def test_settings_are_immutable_and_replace_returns_a_copy() -> None:
    settings = Settings()
    changed = settings.replace(port=1)
    assert (settings.port, changed.port) == (8000, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 2  # type: ignore[misc]


# -- topics and keys -----------------------------------------------------------------------


def test_document_key_groups_one_document() -> None:
    assert document_key("acme", "nfse", "r-1") == b"acme:nfse:r-1"
    assert document_key("acme", "nfse", "r-1") == document_key("acme", "nfse", "r-1")
    assert document_key("acme", "nfse", "r-1") != document_key("acme", "nfse", "r-2")
    assert document_key("acme", "nfse", "r-1") != document_key("other", "nfse", "r-1")
    assert document_key("acme", "nfse", "r-1") != document_key("acme", "nfce", "r-1")
    assert document_key("açme", "nfse", "ré") == "açme:nfse:ré".encode()


def test_topic_names_carry_the_prefix() -> None:
    topics = Topics("t1.")
    assert topics.all() == [
        "t1.nfse.commands",
        "t1.nfce.commands",
        "t1.provider.events",
        "t1.lifecycle",
        "t1.dead-letter",
        "t1.replies",
        "t1.billing.events",
        "t1.billing.commands",
    ]
