"""Table definitions (SQLAlchemy Core). The schema itself is created by the Alembic migrations
in `migrations/versions`; keep both in step."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

metadata = sa.MetaData()


class Json(sa.types.TypeDecorator[Any]):
    """JSON kept as text and (de)serialized with orjson: the claim on the ingress hot path
    writes a whole document per request, and the stdlib encoder showed up in its profile."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> str | None:
        return None if value is None else orjson.dumps(value).decode()

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return None if value is None else orjson.loads(value)


tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


# Tokens are random and long, so a plain SHA-256 is enough to keep them unusable if the table
# leaks; lookups go by hash, never by comparing secrets in Python.
def _token_table(name: str, *owner: sa.Column[Any]) -> sa.Table:
    """A table of hashed tokens: the hash is the key, `owner` the columns after it."""
    return sa.Table(
        name,
        metadata,
        sa.Column("token_hash", sa.String(64), primary_key=True),
        *owner,
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )


tenant_tokens = _token_table(
    "tenant_tokens",
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False),
)

tenant_companies = sa.Table(
    "tenant_companies",
    metadata,
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("cnpj", sa.String(14), primary_key=True),
)

# A company's credentials at a provider (notaflow/accounts.py); `secret` is sealed by
# notaflow/account_keys.py, never stored in the clear.
provider_accounts = sa.Table(
    "provider_accounts",
    metadata,
    sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), primary_key=True),
    sa.Column("cnpj", sa.String(14), primary_key=True),
    sa.Column("provider", sa.String(16), primary_key=True),
    sa.Column("config", Json(), nullable=False),
    sa.Column("secret", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("disabled_at", sa.DateTime(timezone=True)),
)

# Tokens of the admin API (/admin/v1): hashed like tenant tokens, in a table of their own so a
# tenant token can never act as an operator's.
operator_tokens = _token_table("operator_tokens")

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("ref", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("command_id", sa.String(64), nullable=False),
    sa.Column("provider_ref", sa.String(64), unique=True),
    sa.Column("cnpj_prestador", sa.String(14), nullable=False),
    sa.Column("payload", Json(), nullable=False),
    sa.Column("result", Json()),
    sa.Column("erros", Json()),
    sa.Column("submitted_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("tenant_id", "kind", "ref", name="uq_documents_tenant_kind_ref"),
)

document_events = sa.Table(
    "document_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("document_id", sa.BigInteger, nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("detail", Json()),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("path", sa.String(300), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("content_type", sa.String(100), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

hooks = sa.Table(
    "hooks",
    metadata,
    sa.Column("id", sa.String(16), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("cnpj", sa.String(14)),
    sa.Column("cpf", sa.String(11)),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("authorization", sa.String(1000)),
    sa.Column("authorization_header", sa.String(100)),
    sa.Column("signing_secret", sa.String(100), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    # Set by the notification consumer when the hook has failed most deliveries for 7 days.
    sa.Column("disabled_at", sa.DateTime(timezone=True)),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("document_id", sa.BigInteger, nullable=False),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
    sa.Column("target", sa.String(2000), nullable=False),
    sa.Column("payload", Json(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("locked_until", sa.DateTime(timezone=True)),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
# A hook's recent deliveries (its health check). Partial: only webhook rows, whose targets are
# hook ids; queries must say `channel = 'webhook'` as a literal for the planners to use it.
sa.Index(
    "ix_deliveries_hook_recent",
    deliveries.c.target,
    deliveries.c.updated_at,
    postgresql_where=sa.text("channel = 'webhook'"),
    sqlite_where=sa.text("channel = 'webhook'"),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("delivery_id", sa.BigInteger, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("code", sa.Integer),
    sa.Column("message", sa.Text),
    sa.Column("host", sa.String(300)),
)

# Retries under way, one row per Kafka record that failed transiently and is waiting for its
# next attempt. The record itself stays uncommitted in Kafka; this row is what makes its
# attempt count and next due time survive a restart (see consumers/runtime/retries.py).
consumer_retries = sa.Table(
    "consumer_retries",
    metadata,
    sa.Column("consumer", sa.String(64), primary_key=True),
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
