"""Alembic environment. notaflow runs migrations itself (`notaflow migrate`, and at start-up of
`notaflow dev`) by handing Alembic an open connection through `config.attributes`."""

from __future__ import annotations

from alembic import context

from notaflow.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only via notaflow.store.db.migrate
    raise RuntimeError("run migrations with `notaflow migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
