"""Billing: invoice read model, Wuro app credentials, templates, policies, dunning claims."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "invoices",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("id_fatura", sa.BigInteger),
        sa.Column("number", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("seq", sa.BigInteger),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("last_event_id", sa.String(100), nullable=False),
        sa.Column("cpf_cnpj", sa.String(14)),
        sa.Column("codigo_cliente", sa.String(64)),
        sa.Column("id_cliente_servico", sa.String(64)),
        sa.Column("customer_email", sa.String(320)),
        sa.Column("valor", sa.Numeric(14, 2), nullable=False),
        sa.Column("data_vencimento", sa.Date, nullable=False),
        sa.Column("data_pagamento", sa.Date),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "uid", name="uq_invoices_tenant_uid"),
    )
    # The financeiro search: one customer's invoices by due date, whichever key HubSoft uses.
    op.create_index(
        "ix_invoices_cpf_cnpj", "invoices", ["tenant_id", "cpf_cnpj", "data_vencimento"]
    )
    op.create_index(
        "ix_invoices_codigo_cliente", "invoices", ["tenant_id", "codigo_cliente", "data_vencimento"]
    )
    op.create_index(
        "ix_invoices_cliente_servico",
        "invoices",
        ["tenant_id", "id_cliente_servico", "data_vencimento"],
    )
    # Dunning: open invoices past due.
    op.create_index("ix_invoices_due", "invoices", ["state", "data_vencimento"])
    op.create_table(
        "billing_credentials",
        sa.Column("app_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_table(
        "billing_templates",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("action", sa.String(32), primary_key=True),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "billing_policies",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("dunning_steps", sa.Text, nullable=False),
        sa.Column("issuer", sa.Text),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "dunning_claims",
        sa.Column("invoice_id", sa.BigInteger, primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("claimed_at", TS, nullable=False),
        sa.Column("published_at", TS),
    )


def downgrade() -> None:
    for table in ("dunning_claims", "billing_policies", "billing_templates", "billing_credentials"):
        op.drop_table(table)
    op.drop_table("invoices")
