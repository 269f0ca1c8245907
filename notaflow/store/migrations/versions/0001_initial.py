"""Initial schema: tenants, tokens, companies, documents with history, blobs."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "tenant_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS),
    )
    op.create_table(
        "tenant_companies",
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), primary_key=True),
        sa.Column("cnpj", sa.String(14), primary_key=True),
    )
    op.create_table(
        "documents",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("command_id", sa.String(64), nullable=False),
        sa.Column("provider_ref", sa.String(64), unique=True),
        sa.Column("cnpj_prestador", sa.String(14), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("erros", sa.Text),
        sa.Column("submitted_at", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "kind", "ref", name="uq_documents_tenant_kind_ref"),
    )
    # The reconciler (and operators) look for documents stuck in a status.
    op.create_index("ix_documents_status_updated", "documents", ["status", "updated_at"])
    op.create_table(
        "document_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("document_id", sa.BigInteger, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_document_events_document_id", "document_events", ["document_id"])
    op.create_table(
        "blobs",
        sa.Column("path", sa.String(300), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
