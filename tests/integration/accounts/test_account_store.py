"""Provider accounts in the database, on SQLite and PostgreSQL: secrets sealed at rest (the
plaintext is nowhere in the table), create/list/rotate/disable/enable, the refusals, the
migration's downgrade, and re-encryption after a key rotation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.ext.asyncio import AsyncEngine

from notaflow.account_keys import SecretBox, SecretUnreadable, new_key
from notaflow.accounts import ANY_CNPJ, AccountResolver, InvalidAccount, Provider
from notaflow.errors import ConfigurationError
from notaflow.settings import Settings
from notaflow.store import TenantStore, create_engine, migrate
from notaflow.store.accounts import AccountExists, AccountStore
from notaflow.store.db import _alembic_config, current_revision
from notaflow.store.operators import OperatorStore
from notaflow.store.tables import operator_tokens, provider_accounts

A, B = "51916585000125", "11222333000181"
TOKEN_A = "token-focus-da-empresa-A-0123456789"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    await migrate(eng)
    await TenantStore(eng).create("acme", "Acme", [A, B])
    yield eng
    await eng.dispose()


async def raw_secrets(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.scalars(sa.select(provider_accounts.c.secret))).all())


async def dump(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return repr((await conn.execute(sa.select(provider_accounts))).all())


async def test_accounts_round_trip_with_their_secrets_sealed(engine: AsyncEngine) -> None:
    store = AccountStore(engine, SecretBox([new_key()]))
    created = await store.create("acme", A, Provider.FOCUS, {"environment": "producao"}, TOKEN_A)
    assert created.secret == TOKEN_A
    await store.create("acme", B, Provider.EMITES, {"host": "10.1.1.1", "port": 9200})
    await store.create(
        "acme", ANY_CNPJ, Provider.SMTP, {"host": "smtp.acme", "sender": "nf@acme"}, "smtp-pw"
    )
    assert TOKEN_A not in await dump(engine) and "smtp-pw" not in await dump(engine)
    got = await store.get("acme", A, Provider.FOCUS)
    assert got is not None and got.secret == TOKEN_A and got.config == {"environment": "producao"}
    emites = await store.get("acme", B, Provider.EMITES)
    assert emites is not None and emites.secret is None and emites.config["port"] == 9200
    assert await store.get("acme", B, Provider.FOCUS) is None
    listed = await store.list("acme")
    assert [(a.cnpj, a.provider) for a in listed] == [
        ("*", Provider.SMTP),
        (B, Provider.EMITES),
        (A, Provider.FOCUS),
    ]
    assert all(a.secret is None for a in listed)
    assert [a.public()["has_secret"] for a in listed] == [True, False, True]
    assert await store.list("outro") == []


async def test_refusals(engine: AsyncEngine) -> None:
    store = AccountStore(engine, SecretBox([new_key()]))
    await store.create("acme", A, Provider.FOCUS, {"environment": "producao"}, TOKEN_A)
    with pytest.raises(AccountExists):
        await store.create("acme", A, Provider.FOCUS, {"environment": "producao"}, "x")
    with pytest.raises(InvalidAccount, match="unknown tenant"):
        await store.create("nobody", A, Provider.FOCUS, {"environment": "producao"}, "x")
    with pytest.raises(InvalidAccount, match="no company"):
        await store.create(
            "acme", "99888777000161", Provider.FOCUS, {"environment": "producao"}, "x"
        )
    # No key configured: an account without a secret works, one with a secret says what to set.
    keyless = AccountStore(engine, None)
    await keyless.create("acme", A, Provider.EMITES, {"host": "h", "port": 1})
    with pytest.raises(ConfigurationError, match="NOTAFLOW_ACCOUNT_KEYS"):
        await keyless.create("acme", B, Provider.FOCUS, {"environment": "producao"}, "x")
    with pytest.raises(ConfigurationError, match="NOTAFLOW_ACCOUNT_KEYS"):
        await keyless.get("acme", A, Provider.FOCUS)
    assert len(await keyless.list()) == 2  # a listing needs no key


async def test_rotate_disable_enable_show_in_the_resolver(engine: AsyncEngine) -> None:
    store = AccountStore(engine, SecretBox([new_key()]))
    resolver = AccountResolver(store, Settings(focus_token="global"), ttl=0)
    assert (await resolver.focus("acme", A)).token == "global"
    await store.create("acme", A, Provider.FOCUS, {"environment": "homologacao"}, TOKEN_A)
    assert (await resolver.focus("acme", A)).token == TOKEN_A
    assert await store.rotate("acme", A, Provider.FOCUS, "token-novo")
    assert (await resolver.focus("acme", A)).token == "token-novo"
    assert not await store.rotate("acme", B, Provider.FOCUS, "x")
    assert await store.disable("acme", A, Provider.FOCUS)
    got = await store.get("acme", A, Provider.FOCUS)
    assert got is not None and got.disabled
    with pytest.raises(Exception, match="desabilitada"):
        await resolver.focus("acme", A)
    assert await store.enable("acme", A, Provider.FOCUS)
    assert (await resolver.focus("acme", A)).token == "token-novo"


async def test_reencrypt_after_a_key_rotation(engine: AsyncEngine) -> None:
    old, new = new_key(), new_key()
    await AccountStore(engine, SecretBox([old])).create(
        "acme", A, Provider.FOCUS, {"environment": "producao"}, TOKEN_A
    )
    await AccountStore(engine, SecretBox([old])).create(
        "acme", ANY_CNPJ, Provider.SMTP, {"host": "h", "sender": "a@b"}, "pw"
    )
    before = await raw_secrets(engine)
    rotated = AccountStore(engine, SecretBox([new, old]))
    # The old key still reads before any re-encryption.
    got = await rotated.get("acme", A, Provider.FOCUS)
    assert got is not None and got.secret == TOKEN_A
    assert await rotated.reencrypt() == (2, 0)
    assert await rotated.reencrypt() == (0, 2)
    after = await raw_secrets(engine)
    assert set(after).isdisjoint(before)
    only_new = AccountStore(engine, SecretBox([new]))
    got = await only_new.get("acme", A, Provider.FOCUS)
    assert got is not None and got.secret == TOKEN_A
    # A key that opens nothing: re-encryption refuses and writes nothing.
    with pytest.raises(SecretUnreadable):
        await AccountStore(engine, SecretBox([new_key()])).reencrypt()
    assert await raw_secrets(engine) == after


async def test_operator_tokens_are_hashed_and_revocable(engine: AsyncEngine) -> None:
    operators = OperatorStore(engine)
    token = await operators.create("ops")
    assert await operators.label_of(token) == "ops"
    assert await operators.label_of(token + "x") is None
    async with engine.connect() as conn:
        assert token not in repr((await conn.execute(sa.select(operator_tokens))).all())
    # A tenant token is no operator token.
    tenant_token = await TenantStore(engine).create("acme", "Acme", [A])
    assert await operators.label_of(tenant_token) is None
    assert await operators.revoke(token)
    assert await operators.label_of(token) is None


async def test_the_migration_goes_down_and_up(engine: AsyncEngine) -> None:
    async def to(revision: str, down: bool = False) -> None:
        step = command.downgrade if down else command.upgrade
        async with engine.begin() as conn:
            await conn.run_sync(lambda c: step(_alembic_config(c), revision))

    await to("0005", down=True)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
    assert "provider_accounts" not in names and "operator_tokens" not in names
    await migrate(engine)
    assert await current_revision(engine) == "0006"
