"""Kafka security settings reach aiokafka: SASL mechanisms it implements, a private CA, a client
certificate, the host name check, and a token file for OAUTHBEARER."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from notaflow.bus import FileTokenProvider, client_options
from notaflow.errors import ConfigurationError
from notaflow.settings import Settings


def write_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA certificate, and a client certificate and key signed by it (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cluster-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "notaflow")]))
        .issuer_name(name)
        .public_key(client_key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "user.crt", directory / "user.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(client.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    ca, cert, key = write_ca(tmp_path)
    settings = Settings.from_env(
        {
            "NOTAFLOW_KAFKA_SECURITY_PROTOCOL": "SSL",
            "NOTAFLOW_KAFKA_SSL_CAFILE": str(ca),
            "NOTAFLOW_KAFKA_SSL_CERTFILE": str(cert),
            "NOTAFLOW_KAFKA_SSL_KEYFILE": str(key),
            "NOTAFLOW_KAFKA_SSL_CHECK_HOSTNAME": "false",
        }
    )
    opts = client_options(settings)
    context: ssl.SSLContext = opts["ssl_context"]
    assert opts["security_protocol"] == "SSL"
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED
    # The private CA is the one trusted (not only the system's).
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "cluster-ca"),),)]
    with_check = client_options(settings.replace(kafka_ssl_check_hostname=True))
    assert with_check["ssl_context"].check_hostname is True


def test_unreadable_tls_files_are_a_configuration_error(tmp_path: Path) -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL", kafka_ssl_cafile=str(tmp_path / "missing.crt")
    )
    with pytest.raises(ConfigurationError, match="Kafka TLS files cannot be loaded"):
        client_options(settings)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_password_mechanisms(mechanism: str) -> None:
    opts = client_options(
        Settings(
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username="u",
            kafka_sasl_password="p",
        )
    )
    assert opts["sasl_mechanism"] == mechanism
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("u", "p")
    assert "ssl_context" not in opts


def test_gssapi_and_oauthbearer(tmp_path: Path) -> None:
    opts = client_options(Settings(kafka_sasl_mechanism="GSSAPI"))
    assert opts["sasl_kerberos_service_name"] == "kafka"
    token = tmp_path / "token"
    token.write_text("eyJ.first\n")
    opts = client_options(
        Settings(kafka_sasl_mechanism="OAUTHBEARER", kafka_sasl_oauth_token_file=str(token))
    )
    assert isinstance(opts["sasl_oauth_token_provider"], FileTokenProvider)
    with pytest.raises(ConfigurationError, match="TOKEN_FILE"):
        client_options(Settings(kafka_sasl_mechanism="OAUTHBEARER"))


async def test_the_oauth_token_is_read_at_every_authentication(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    provider = FileTokenProvider(str(token))
    assert await provider.token() == "first"
    token.write_text("rotated")  # the platform rotates it in place
    assert await provider.token() == "rotated"
