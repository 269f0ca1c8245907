"""The settings model refuses what cannot work, reads secrets from files, and sizes the pool."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from notaflow.errors import ConfigurationError
from notaflow.settings import PREFIX, TOOLING, Settings


def test_unknown_names_are_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"NOTAFLOW_LOG_FROMAT": "json"})
    assert "NOTAFLOW_LOG_FROMAT" in str(info.value)
    assert "did you mean NOTAFLOW_LOG_FORMAT" in str(info.value)
    with pytest.raises(ConfigurationError, match="NOTAFLOW_EXTRA"):
        Settings.from_env({"NOTAFLOW_EXTRA": "x"})
    # Not ours: other prefixes, and the test suite's own knobs.
    Settings.from_env({"OTHER_PORT": "x", "NOTAFLOWX": "1", **dict.fromkeys(TOOLING, "1")})


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("LOG_FORMAT", "jsn", "is not one of 'text', 'json'"),
        ("LOG_LEVEL", "LOUD", "is not one of"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS", "is not one of"),
        ("KAFKA_SASL_MECHANISM", "SCRAM", "is not one of"),
        ("SMTP_SECURITY", "ssl", "is not one of"),
        ("PORT", "70000", "between 0 and 65535"),
        ("EMITES_PORT", "0", "between 1 and 65535"),
        ("KAFKA_PARTITIONS", "0", ">= 1"),
        ("CONSUMER_CONCURRENCY", "-5", ">= 1"),
        ("DATABASE_POOL_SIZE", "0", ">= 1"),
        ("DATABASE_MAX_OVERFLOW", "-1", ">= 0"),
        ("EMITES_PORT", "tcp://10.0.0.1:9000", "enableServiceLinks: false"),
    ],
)
def test_bad_values_are_refused_in_one_line(name: str, raw: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({f"NOTAFLOW_{name}": raw})
    message = str(info.value)
    assert message.startswith(f"NOTAFLOW_{name}={raw!r}")
    assert says in message
    assert "\n" not in message


def test_log_level_is_case_insensitive() -> None:
    assert Settings.from_env({"NOTAFLOW_LOG_LEVEL": "debug"}).log_level == "DEBUG"


SECRETS = {
    "database_url",
    "kafka_sasl_password",
    "focus_token",
    "focus_webhook_secret",
    "smtp_password",
    "billing_link_secret",
    "account_keys",
}


def test_every_secret_has_a_file_variant(tmp_path: Path) -> None:
    marked = {f.name for f in dataclasses.fields(Settings) if f.metadata.get("secret")}
    assert marked == SECRETS
    env = {}
    for name in SECRETS:
        path = tmp_path / name
        path.write_text(f"value of {name}\n")  # as `echo value > file` or a Secret volume
        env[f"{PREFIX}{name.upper()}_FILE"] = str(path)
    settings = Settings.from_env(env)
    for name in SECRETS:
        assert getattr(settings, name) == f"value of {name}"
    # A non-secret has no file variant.
    with pytest.raises(ConfigurationError, match="unknown setting NOTAFLOW_PORT_FILE"):
        Settings.from_env({"NOTAFLOW_PORT_FILE": str(tmp_path / "focus_token")})


def test_secret_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("t")
    with pytest.raises(ConfigurationError, match="not both"):
        Settings.from_env({"NOTAFLOW_FOCUS_TOKEN": "a", "NOTAFLOW_FOCUS_TOKEN_FILE": str(path)})
    with pytest.raises(ConfigurationError, match="cannot be read: No such file"):
        Settings.from_env({"NOTAFLOW_FOCUS_TOKEN_FILE": str(tmp_path / "missing")})
    # Only one trailing newline is the file's.
    path.write_text("  spaced token \n\n")
    assert Settings.from_env({"NOTAFLOW_FOCUS_TOKEN_FILE": str(path)}).focus_token == (
        "  spaced token \n"
    )


def test_database_pool_and_pgbouncer_options() -> None:
    settings = Settings.from_env(
        {
            "NOTAFLOW_DATABASE_POOL_SIZE": "3",
            "NOTAFLOW_DATABASE_MAX_OVERFLOW": "2",
            "NOTAFLOW_DATABASE_POOL_TIMEOUT": "7.5",
        }
    )
    assert settings.database_options() == {"pool_size": 3, "max_overflow": 2, "pool_timeout": 7.5}
    bouncer = settings.replace(database_pgbouncer=True).database_options()["connect_args"]
    assert bouncer["statement_cache_size"] == 0
    assert bouncer["prepared_statement_cache_size"] == 0
    names = {bouncer["prepared_statement_name_func"]() for _ in range(3)}
    assert len(names) == 3  # unique per statement: no clash on a shared server connection


async def test_the_pool_settings_reach_the_engine() -> None:
    from notaflow.store import create_engine

    settings = Settings(
        database_url="postgresql://u:p@127.0.0.1:1/x", database_pool_size=3
    ).replace(database_max_overflow=4, database_pool_timeout=2.0)
    engine = create_engine(settings.database_url, **settings.database_options())
    try:
        pool = engine.sync_engine.pool
        assert pool.size() == 3  # type: ignore[attr-defined]
        assert pool._max_overflow == 4  # type: ignore[attr-defined]
        assert pool._timeout == 2.0  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
    # SQLite keeps its own pool: the options are ignored rather than refused.
    lite = create_engine(
        "sqlite:///:memory:", **settings.replace(database_pgbouncer=True).database_options()
    )
    await lite.dispose()


def test_the_ingress_grace_outlasts_every_synchronous_wait() -> None:
    s = Settings()
    assert s.graceful_timeout > max(s.nfce_wait, s.cancel_wait, s.sync_email_wait)


def test_a_secrets_directory_is_read_like_the_environment(tmp_path: Path) -> None:
    # A Kubernetes Secret volume: one file per key, plus the kubelet's own ..data entries.
    (tmp_path / "NOTAFLOW_FOCUS_TOKEN").write_text("token-from-file")
    (tmp_path / "NOTAFLOW_DATABASE_URL").write_text("postgresql://u:p@db/notaflow\n")
    (tmp_path / "..data").mkdir()
    settings = Settings.from_env({"NOTAFLOW_SECRETS_DIR": str(tmp_path)})
    assert settings.focus_token == "token-from-file"
    assert settings.database_url == "postgresql://u:p@db/notaflow"
    with pytest.raises(ConfigurationError, match="also a file"):
        Settings.from_env({"NOTAFLOW_SECRETS_DIR": str(tmp_path), "NOTAFLOW_FOCUS_TOKEN": "x"})
    (tmp_path / "NOTAFLOW_FOCUS_TOKN").write_text("typo")
    with pytest.raises(ConfigurationError, match="unknown setting NOTAFLOW_FOCUS_TOKN"):
        Settings.from_env({"NOTAFLOW_SECRETS_DIR": str(tmp_path)})
    with pytest.raises(ConfigurationError, match="cannot be read"):
        Settings.from_env({"NOTAFLOW_SECRETS_DIR": str(tmp_path / "missing")})
