"""Billing tables: the invoice read model, app credentials (Wuro), e-mail templates, tenant
policies and dunning claims. Created by migration 0003; keep both in step."""

from __future__ import annotations

import sqlalchemy as sa

from notaflow.store.tables import Json, metadata

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)

# One row per (tenant, uid): the newest state of the invoice that the event rules accepted.
# `seq`, `occurred_at` and `rank` are the ordering key of the last applied event
# (notaflow.billing.should_apply); the searchable HubSoft fields are columns so the
# financeiro query runs on an index, everything else is in `data`.
invoices = sa.Table(
    "invoices",
    metadata,
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
    sa.Column("data", Json(), nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.UniqueConstraint("tenant_id", "uid", name="uq_invoices_tenant_uid"),
    sa.Index("ix_invoices_cpf_cnpj", "tenant_id", "cpf_cnpj", "data_vencimento"),
    sa.Index("ix_invoices_codigo_cliente", "tenant_id", "codigo_cliente", "data_vencimento"),
    sa.Index("ix_invoices_cliente_servico", "tenant_id", "id_cliente_servico", "data_vencimento"),
    sa.Index("ix_invoices_due", "state", "data_vencimento"),
)

# Wuro's X-APP-ID / X-APP-SECRET: the secret is random and long, so SHA-256 suffices (as for
# tenant tokens); the app id is looked up, the hash compared in constant time.
billing_credentials = sa.Table(
    "billing_credentials",
    metadata,
    sa.Column("app_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("revoked_at", TS),
)

billing_templates = sa.Table(
    "billing_templates",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("action", sa.String(32), primary_key=True),
    sa.Column("subject", sa.String(500), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

billing_policies = sa.Table(
    "billing_policies",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("dunning_steps", Json(), nullable=False),
    sa.Column("issuer", Json()),
    sa.Column("updated_at", TS, nullable=False),
)

# A dunning step is claimed by inserting its row before the reminder is published: the
# primary key makes concurrent `notaflow dunning` runs send each step once.
dunning_claims = sa.Table(
    "dunning_claims",
    metadata,
    sa.Column("invoice_id", sa.BigInteger, primary_key=True),
    sa.Column("step", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("claimed_at", TS, nullable=False),
    sa.Column("published_at", TS),
)
