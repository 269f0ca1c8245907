"""Fixtures of the mail tests."""

from __future__ import annotations

import ssl

import pytest

from testkit.certificates import self_signed


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a self-signed certificate (for localhost), made here."""
    cert_file, key_file = self_signed("localhost", tmp_path_factory.mktemp("tls"))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
