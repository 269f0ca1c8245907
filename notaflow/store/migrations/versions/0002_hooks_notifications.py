"""Client webhooks (gatilhos), notification deliveries (e-mail and webhook) and their attempts."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "hooks",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("cnpj", sa.String(14)),
        sa.Column("cpf", sa.String(11)),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("authorization", sa.String(1000)),
        sa.Column("authorization_header", sa.String(100)),
        sa.Column("signing_secret", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted_at", TS),
    )
    op.create_index("ix_hooks_tenant_event", "hooks", ["tenant_id", "event"])
    op.create_table(
        "deliveries",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("document_id", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        # What makes a delivery unique (event id + recipient or hook): a redelivered record
        # finds its row and never sends again.
        sa.Column("dedupe_key", sa.String(300), nullable=False, unique=True),
        sa.Column("target", sa.String(2000), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TS),
        sa.Column("locked_until", TS),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_deliveries_document", "deliveries", ["document_id"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.BigInteger, nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("code", sa.Integer),
        sa.Column("message", sa.Text),
        sa.Column("host", sa.String(300)),
    )
    op.create_index("ix_delivery_attempts_delivery", "delivery_attempts", ["delivery_id"])
