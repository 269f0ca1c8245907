"""Process settings, built once from `NOTAFLOW_*` environment variables and passed down.

Library code never reads `os.environ`; the CLI calls `Settings.from_env()` and hands the result
to the factories. Precedence (as in uvicorn): explicit CLI flags > environment > defaults.

The model is strict, so a typo cannot go unnoticed in production: a `NOTAFLOW_*` name that is
no setting, a value of the wrong type, a value outside a setting's choices or range is refused
with one `ConfigurationError` line (the CLI prints it and exits 2). Every secret may instead be
read from a file (`NOTAFLOW_<NAME>_FILE`, e.g. a mounted Kubernetes Secret); giving both is an
error. A field's `metadata` holds its rules: `choices`, `min`/`max`, `secret`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from notaflow.errors import ConfigurationError

PREFIX = "NOTAFLOW_"
FILE_SUFFIX = "_FILE"

# `NOTAFLOW_*` names that are not settings of the processes but knobs of the test suite; the
# test harness's children inherit them, so they are let through.
TOOLING = frozenset({"NOTAFLOW_FAULT_SEED", "NOTAFLOW_FUZZ_DATABASE", "NOTAFLOW_FUZZ_EXAMPLES"})


def choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": (default, *choices)})


def secret(default: str = "") -> Any:
    return field(default=default, metadata={"secret": True})


def bounded(default: float, low: float | None = None, high: float | None = None) -> Any:
    return field(default=default, metadata={"min": low, "max": high})


def tcp_port(default: int, allow_any: bool = False) -> Any:
    """A TCP port; 0 ("any free port") only where the process can use it."""
    return bounded(default, 0 if allow_any else 1, 65535)


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "notaflow."
    kafka_partitions: int = bounded(6, 1)
    kafka_replication: int = bounded(1, 1)
    # The embedded broker (Tansu) rejects InitProducerId, so dev/tests turn this off; real Kafka
    # keeps it on so producer retries cannot duplicate records.
    kafka_idempotence: bool = True
    kafka_publish_timeout: float = bounded(5.0, 0.001)
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_ms: int = 1_000
    kafka_security_protocol: str = choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    # The mechanisms aiokafka implements. GSSAPI needs the `gssapi` package in the image;
    # OAUTHBEARER reads its token from kafka_sasl_oauth_token_file at every (re)authentication.
    kafka_sasl_mechanism: str = choice(
        "", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"
    )
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = secret()
    kafka_sasl_kerberos_service_name: str = "kafka"
    kafka_sasl_oauth_token_file: str = ""
    # TLS to the brokers (SSL, SASL_SSL): a private CA (Strimzi's cluster CA), a client
    # certificate for mutual TLS. Empty CA file: the system's CAs.
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_ssl_check_hostname: bool = True
    # Consumer group ids are <prefix><consumer>: two environments can share one cluster.
    kafka_group_prefix: str = "notaflow-"
    # State
    database_url: str = secret("sqlite+aiosqlite:///./notaflow.db")
    # Connections per process (PostgreSQL): each process holds up to size + overflow, so the
    # sum over every process must stay under the server's max_connections (default 100).
    database_pool_size: int = bounded(10, 1)
    database_max_overflow: int = bounded(20, 0)
    database_pool_timeout: float = bounded(30.0, 0.001)
    # The URL points at PgBouncer in transaction mode: asyncpg's prepared-statement caches off
    # (a statement prepared on one server connection is unknown on the next).
    database_pgbouncer: bool = False
    # Ingress
    host: str = "127.0.0.1"
    port: int = tcp_port(8000, allow_any=True)
    # Ops port: /metrics, /healthz, /readyz, /docs, /openapi.json move there from the public
    # port (0: everything on the public port, as in development).
    ops_port: int = tcp_port(0, allow_any=True)
    # With an ops port: also serve /docs and /openapi.json on the public port.
    public_docs: bool = True
    # Seconds uvicorn lets open requests finish after SIGTERM: longer than the longest
    # synchronous wait below (sync_email_wait), or a rollout cuts those requests.
    graceful_timeout: float = bounded(65.0, 0)
    max_body_bytes: int = bounded(1_048_576, 1)
    public_url: str = "http://127.0.0.1:8000"
    # HMAC key of the invoice links in billing e-mails (PDF/HTML without credentials).
    billing_link_secret: str = secret()
    # Provider: Focus NFe
    focus_base_url: str = "https://homologacao.focusnfe.com.br"
    # Where provider accounts (notaflow/accounts.py) of environment "producao" call Focus;
    # "homologacao" accounts call focus_base_url.
    focus_production_url: str = "https://api.focusnfe.com.br"
    focus_token: str = secret()
    focus_timeout: float = bounded(30.0, 0.001)
    # Static value Focus sends in the header of our hook; compared in constant time.
    focus_webhook_secret: str = secret()
    focus_webhook_header: str = "Authorization"
    # Provider: Emites-Client (NFC-e over TCP); the CNPJ it issues for
    emites_host: str = "127.0.0.1"
    emites_port: int = tcp_port(9100)
    emites_pool: int = bounded(4, 1)
    emites_timeout: float = 60.0
    emites_cnpj: str = ""
    # How long POST/DELETE /v2/nfce wait for SEFAZ's answer before answering 202.
    nfce_wait: float = 30.0
    # How long DELETE /v2/nfse/REF waits for the provider's answer before answering 202.
    cancel_wait: float = 10.0
    # How long the synchronous HubSoft e-mail route waits for the sends.
    sync_email_wait: float = 60.0
    # SMTP (empty host: e-mail is not configured; HubSoft's route says so)
    smtp_host: str = ""
    smtp_port: int = tcp_port(587)
    smtp_security: str = choice("starttls", "tls", "none")
    smtp_username: str = ""
    smtp_password: str = secret()
    smtp_sender: str = "notaflow@localhost"
    smtp_sender_name: str = "notaflow"
    smtp_pause: float = 1.0
    # Sends to one server at once, each on its own connection, when smtp_pause is 0 (with a
    # pause they go one at a time).
    smtp_connections: int = bounded(4, 1, 64)
    # Pipeline each e-mail's MAIL, RCPT and DATA (RFC 2920) where the server offers PIPELINING:
    # off for a server, or a middlebox in front of it, that offers it and mishandles it.
    smtp_pipelining: bool = True
    smtp_timeout: float = 30.0
    # Provider accounts (notaflow/accounts.py): Fernet keys encrypting their secrets at rest,
    # comma-separated, newest first. The newest encrypts; every key listed still decrypts, so a
    # new key goes in front and an old one leaves after `notaflow account reencrypt`.
    account_keys: str = secret()
    # How long a consumer or the ingress reuses an account lookup (a rotated or disabled
    # account shows within this many seconds).
    account_cache_ttl: float = bounded(5.0, 0)
    # Client webhooks
    hooks_allow_private: bool = False
    hooks_retry_schedule: str = "60,1800,3600,10800,86400"
    hooks_timeout: float = 10.0
    # Seconds an e-mail's or a hook's lock lasts unless its process renews it (every third of
    # it, while the attempt runs): how long a dead process's deliveries wait for another.
    delivery_lease: float = bounded(15.0, 1.5)
    # Consumers
    # Calls in flight at the provider per consumer process (Focus's client enforces it), and
    # for consumers without such a client, the records in flight.
    consumer_concurrency: int = bounded(200, 1)
    # Records in flight per process for the Focus consumers (emission, cancellation); 0 means
    # four times the concurrency: records wait for a call slot with their bookkeeping done.
    consumer_window: int = bounded(0, 0)
    consumer_retry_base: float = 1.0
    consumer_retry_max: float = 60.0
    consumer_max_attempts: int = bounded(8, 1)
    # How long a consumer's fetch waits for records. The embedded broker answers only at the
    # end of the wait, so it bounds command-to-call latency there; on Kafka (which answers as
    # records arrive) it only sets how often an idle consumer asks.
    consumer_fetch_wait_ms: int = bounded(25, 1)
    # The wait once a consumer has had no record for 10 s (consumers.runtime.fetch_wait): how
    # often an idle consumer asks. Kafka answers as records arrive whatever the wait.
    consumer_fetch_wait_idle_ms: int = bounded(250, 1)
    log_level: str = choice("INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL")
    # Observability
    log_format: str = choice("text", "json")  # json in production (one object per line)
    health_host: str = "0.0.0.0"  # consumers' /healthz and /metrics (probes hit the pod IP)
    health_port: int = tcp_port(8081, allow_any=True)  # 0: any free port (several consumers)
    health_max_idle: float = 300.0  # busy without progress this long: /healthz answers 503
    # OpenTelemetry tracing (off unless one of these is set)
    otel_endpoint: str = ""  # OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces
    otel_dir: str = ""  # write finished spans as JSON lines here (development, tests)
    # A directory of files named like the variables (NOTAFLOW_FOCUS_TOKEN, ...), read as their
    # values: the chart mounts the Secret there instead of exposing it as environment.
    secrets_dir: str = ""
    # Ingress server limits (issue 19), applied by the server before a request reaches the app:
    # the request line and headers at most this many bytes (431 past it), delivered within
    # this many seconds of the connection or of the request's first byte (408 past it); idle
    # keep-alive connections closed after `keep_alive_timeout`; past `max_concurrency`
    # connections or requests at once, new ones get 503 (0: no limit).
    ingress_max_header_bytes: int = 16_384
    ingress_header_timeout: float = 10.0
    ingress_keep_alive_timeout: float = 5.0
    ingress_max_concurrency: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        names = {PREFIX + name.upper(): name for name in known}
        files = {n + FILE_SUFFIX: a for n, a in names.items() if known[a].metadata.get("secret")}
        unknown = sorted(
            n for n in env if n.startswith(PREFIX) and n not in names and n not in files
        )
        unknown = [n for n in unknown if n not in TOOLING]
        if unknown:
            raise ConfigurationError(f"unknown setting {_unknown(unknown[0], names)}")
        in_dir = _settings_dir(env.get(PREFIX + "SECRETS_DIR", ""), names)
        values: dict[str, Any] = {}
        for var, attr in names.items():
            raw = env.get(var)
            path = env.get(var + FILE_SUFFIX) if var + FILE_SUFFIX in files else None
            if path is None and var in in_dir:
                path = in_dir[var]
                if raw is not None:
                    raise ConfigurationError(f"{var} is set and also a file in {path}")
            if path is not None:
                if raw is not None:
                    raise ConfigurationError(f"set {var} or {var}{FILE_SUFFIX}, not both")
                raw = _read_secret(var + FILE_SUFFIX, path)
            if raw is None:
                continue
            values[attr] = _check(var, known[attr], _parse(attr, known[attr].type, raw), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def env(self) -> dict[str, str]:
        """The settings as `NOTAFLOW_*` variables, to configure a child process."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[PREFIX + f.name.upper()] = (
                ("true" if value else "false") if isinstance(value, bool) else str(value)
            )
        return out

    def database_options(self) -> dict[str, Any]:
        """Keyword arguments of `store.create_engine` (pool size, overflow, timeout, PgBouncer)."""
        options: dict[str, Any] = {
            "pool_size": self.database_pool_size,
            "max_overflow": self.database_max_overflow,
            "pool_timeout": self.database_pool_timeout,
        }
        if self.database_pgbouncer:
            # asyncpg prepares every statement; PgBouncer in transaction mode hands the next
            # transaction another server connection, where the prepared name does not exist.
            options["connect_args"] = {
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": _unique_statement_name,
            }
        return options


def _unique_statement_name() -> str:
    import uuid

    return f"__asyncpg_{uuid.uuid4().hex}__"


def _unknown(name: str, names: Mapping[str, str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{name}{hint}; see README.md, Configuration"


def _settings_dir(directory: str, names: Mapping[str, str]) -> dict[str, str]:
    """NOTAFLOW_SECRETS_DIR: a directory of files named like the variables (a Kubernetes Secret
    mounted as a volume), each read as the setting's value. Kubernetes' own `..data` entries are
    skipped; any other unknown name is refused, as in the environment."""
    if not directory:
        return {}
    try:
        entries = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigurationError(
            f"{PREFIX}SECRETS_DIR={directory!r} cannot be read: {exc.strerror}"
        ) from None
    out: dict[str, str] = {}
    for entry in entries:
        if entry.startswith(".."):
            continue
        if entry not in names:
            raise ConfigurationError(
                f"unknown setting {_unknown(entry, names)} (a file in {directory})"
            )
        out[entry] = os.path.join(directory, entry)
    return out


def _read_secret(var: str, path: str) -> str:
    try:
        # One trailing newline is the file's, not the secret's (`echo x > file`).
        return Path(path).read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(f"{var}={path!r} cannot be read: {reason}") from None


def _check(var: str, f: dataclasses.Field[Any], value: Any, raw: str) -> Any:
    choices = f.metadata.get("choices")
    if choices is not None:
        if f.name == "log_level":
            value = value.upper()
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise ConfigurationError(f"{var}={raw!r} is not one of {allowed}")
    low, high = f.metadata.get("min"), f.metadata.get("max")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigurationError(f"{var}={raw!r} must be {bounds}")
    return value


def _parse(name: str, annotation: object, raw: str) -> Any:
    kind = str(annotation)
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        hint = ""
        if raw.startswith("tcp://"):
            # Kubernetes injects <SERVICE>_PORT=tcp://ip:port for every Service in the namespace
            # unless the pod says enableServiceLinks: false.
            hint = " (a Kubernetes service link? set enableServiceLinks: false on the pod)"
        raise ConfigurationError(
            f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind}{hint}"
        ) from None
    return raw
