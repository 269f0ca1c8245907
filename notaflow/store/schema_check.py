"""Is the database schema the one this release expects? Only `notaflow migrate` changes the
schema; the operator verbs (tenant, billing-*) check it and tell the user to migrate, instead of
upgrading a production database on the side (under a different user, outside the rollout)."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.errors import SchemaBehind
from notaflow.store.db import MIGRATIONS, current_revision

__all__ = ["SchemaBehind", "head_revision", "require_current_schema"]


def head_revision() -> str:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None, "no migrations"
    return head


async def require_current_schema(engine: AsyncEngine) -> None:
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        found = "no schema" if current is None else f"revision {current}"
        raise SchemaBehind(
            f"the database has {found}, this release needs revision {head}: "
            "run `notaflow migrate` first"
        )
