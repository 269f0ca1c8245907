"""Provider accounts per company (issue 15): a tenant's credentials at Focus, Emites-Client and
its own SMTP server, secrets encrypted (notaflow/account_keys.py); and the operator tokens of
the admin API, hashed like the tenants' tokens."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "provider_accounts",
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), primary_key=True),
        # 14 digits, or "*": every company of the tenant.
        sa.Column("cnpj", sa.String(14), primary_key=True),
        sa.Column("provider", sa.String(16), primary_key=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("secret", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("disabled_at", TS),
    )
    op.create_table(
        "operator_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )


def downgrade() -> None:
    op.drop_table("operator_tokens")
    op.drop_table("provider_accounts")
