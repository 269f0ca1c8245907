"""Process settings, built once from `NOTAFLOW_*` environment variables and passed down.

Library code never reads `os.environ`; the CLI calls `Settings.from_env()` and hands the result
to the factories. Precedence (as in uvicorn): explicit CLI flags > environment > defaults.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from notaflow.errors import ConfigurationError

PREFIX = "NOTAFLOW_"


@dataclass(frozen=True)
class Settings:
    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "notaflow."
    kafka_partitions: int = 6
    kafka_replication: int = 1
    # The embedded broker (Tansu) rejects InitProducerId, so dev/tests turn this off; real Kafka
    # keeps it on so producer retries cannot duplicate records.
    kafka_idempotence: bool = True
    kafka_publish_timeout: float = 5.0
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_ms: int = 1_000
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    # State
    database_url: str = "sqlite+aiosqlite:///./notaflow.db"
    # Ingress
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_048_576
    public_url: str = "http://127.0.0.1:8000"
    # HMAC key of the invoice links in billing e-mails (PDF/HTML without credentials).
    billing_link_secret: str = ""
    # Provider: Focus NFe
    focus_base_url: str = "https://homologacao.focusnfe.com.br"
    focus_token: str = ""
    focus_timeout: float = 30.0
    # Static value Focus sends in the header of our hook; compared in constant time.
    focus_webhook_secret: str = ""
    focus_webhook_header: str = "Authorization"
    # Provider: Emites-Client (NFC-e over TCP); the CNPJ it issues for
    emites_host: str = "127.0.0.1"
    emites_port: int = 9100
    emites_pool: int = 4
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
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_sender: str = "notaflow@localhost"
    smtp_sender_name: str = "notaflow"
    smtp_pause: float = 1.0
    smtp_timeout: float = 30.0
    # Client webhooks
    hooks_allow_private: bool = False
    hooks_retry_schedule: str = "60,1800,3600,10800,86400"
    hooks_timeout: float = 10.0
    # Consumers
    # Calls in flight at the provider per consumer process (Focus's client enforces it), and
    # for consumers without such a client, the records in flight.
    consumer_concurrency: int = 200
    # Records in flight per process for the Focus consumers (emission, cancellation); 0 means
    # four times the concurrency: records wait for a call slot with their bookkeeping done.
    consumer_window: int = 0
    consumer_retry_base: float = 1.0
    consumer_retry_max: float = 60.0
    consumer_max_attempts: int = 8
    # Issue 16: how long a consumer's fetch waits for records. The embedded broker answers only
    # at the end of the wait, so it bounds command-to-call latency there; on Kafka (which
    # answers as records arrive) it only sets how often an idle consumer asks.
    consumer_fetch_wait_ms: int = 25
    log_level: str = "INFO"
    # Observability
    log_format: str = "text"  # json in production (one JSON object per line)
    health_host: str = "0.0.0.0"  # consumers' /healthz and /metrics (probes hit the pod IP)
    health_port: int = 8081  # 0: any free port (several consumers on one machine)
    health_max_idle: float = 300.0  # busy without progress this long: /healthz answers 503
    # OpenTelemetry tracing (off unless one of these is set)
    otel_endpoint: str = ""  # OTLP/HTTP traces endpoint, e.g. http://collector:4318/v1/traces
    otel_dir: str = ""  # write finished spans as JSON lines here (development, tests)
    extra: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def env(self) -> dict[str, str]:
        """The settings as `NOTAFLOW_*` variables, to configure a child process."""
        out: dict[str, str] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[PREFIX + f.name.upper()] = (
                ("true" if value else "false") if isinstance(value, bool) else str(value)
            )
        return out


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
    except ValueError as exc:
        raise ConfigurationError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from exc
    return raw
