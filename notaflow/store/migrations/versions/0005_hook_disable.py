"""Hooks failing most deliveries for 7 days are disabled (Focus): when, and the index the
consumer's check reads a hook's recent deliveries by."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

TS = sa.DateTime(timezone=True)
# Partial, and matched by the query's literal `channel = 'webhook'`: only hook ids (8
# characters) are indexed, never the e-mail addresses that share the `target` column.
WEBHOOKS = sa.text("channel = 'webhook'")


def upgrade() -> None:
    op.add_column("hooks", sa.Column("disabled_at", TS))
    # A hook's deliveries touched in the last 7 days: every attempt sets `updated_at`.
    op.create_index(
        "ix_deliveries_hook_recent",
        "deliveries",
        ["target", "updated_at"],
        postgresql_where=WEBHOOKS,
        sqlite_where=WEBHOOKS,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_hook_recent", "deliveries")
    with op.batch_alter_table("hooks") as batch:
        batch.drop_column("disabled_at")
