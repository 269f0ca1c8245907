"""Tracing off (the default): spans cost nothing, not even their attributes."""

from __future__ import annotations

from notaflow import tracing


def test_a_client_span_while_tracing_is_off_is_nothing_and_parses_no_url() -> None:
    assert not tracing.enabled()
    # A URL urlsplit refuses: were its attributes computed, this would raise.
    span = tracing.client_span("POST", "http://[not-an-address/hook", **{"peer.service": "x"})
    with span as current:
        assert current is None
    assert span is tracing.client_span("GET", "https://example.com/")  # one shared no-op
