"""Which credentials a company uses (notaflow/accounts.py): its own account, else the tenant's
account for every CNPJ, else the global settings; a disabled account refuses instead of falling
through to the default. The field checks of the CLI and the admin API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from notaflow.accounts import (
    ANY_CNPJ,
    Account,
    AccountDisabled,
    AccountResolver,
    EmitesEndpoint,
    Environment,
    FocusCredentials,
    InvalidAccount,
    Provider,
    SmtpSender,
    check_account,
)
from notaflow.settings import Settings

A, B = "51916585000125", "11222333000181"
NOW = datetime(2026, 12, 1, tzinfo=UTC)
SETTINGS = Settings(
    focus_token="global-token",
    focus_base_url="http://homolog.test",
    focus_production_url="http://producao.test",
    emites_host="10.0.0.1",
    emites_port=9100,
    smtp_host="smtp.global.test",
    smtp_password="global-pw",
)


def account(
    cnpj: str,
    provider: Provider,
    config: dict[str, Any],
    secret: str | None = None,
    disabled: bool = False,
) -> Account:
    return Account("acme", cnpj, provider, config, secret, NOW, NOW, NOW if disabled else None)


class Lookup:
    def __init__(self, *accounts: Account) -> None:
        self.rows = {(a.tenant, a.cnpj, a.provider): a for a in accounts}
        self.calls = 0

    async def get(self, tenant: str, cnpj: str, provider: Provider) -> Account | None:
        self.calls += 1
        return self.rows.get((tenant, cnpj, provider))


async def test_a_company_without_an_account_uses_the_global_settings() -> None:
    resolver = AccountResolver(Lookup(), SETTINGS)
    focus = await resolver.account_for("acme", A, Provider.FOCUS)
    assert focus == FocusCredentials("global-token", Environment.HOMOLOGACAO, "http://homolog.test")
    emites = await resolver.emites("acme", A)
    assert emites == EmitesEndpoint("10.0.0.1", 9100, SETTINGS.emites_pool, SETTINGS.emites_timeout)
    smtp = await resolver.smtp("acme")
    assert smtp.host == "smtp.global.test" and smtp.password == "global-pw"


async def test_each_company_gets_its_own_token_and_environment() -> None:
    lookup = Lookup(
        account(A, Provider.FOCUS, {"environment": "producao"}, "token-A"),
        account(B, Provider.FOCUS, {"environment": "homologacao"}, "token-B"),
    )
    resolver = AccountResolver(lookup, SETTINGS)
    assert await resolver.focus("acme", A) == FocusCredentials(
        "token-A", Environment.PRODUCAO, "http://producao.test"
    )
    assert await resolver.focus("acme", B) == FocusCredentials(
        "token-B", Environment.HOMOLOGACAO, "http://homolog.test"
    )
    # Another tenant's company of the same CNPJ is not acme's.
    assert (await resolver.focus("outro", A)).token == "global-token"


async def test_a_tenant_wide_account_covers_companies_without_their_own() -> None:
    lookup = Lookup(
        account(
            ANY_CNPJ, Provider.SMTP, {"host": "smtp.acme.test", "sender": "nf@acme.test"}, "pw"
        ),
        account(B, Provider.SMTP, {"host": "smtp.b.test", "sender": "nf@b.test", "port": 465}),
    )
    resolver = AccountResolver(lookup, SETTINGS)
    a = await resolver.smtp("acme", A)
    assert (a.host, a.sender, a.password, a.port) == ("smtp.acme.test", "nf@acme.test", "pw", 587)
    b = await resolver.smtp("acme", B)
    assert (b.host, b.port, b.password) == ("smtp.b.test", 465, None)


async def test_a_disabled_account_refuses_and_never_falls_back_to_the_global_token() -> None:
    resolver = AccountResolver(
        Lookup(account(A, Provider.FOCUS, {"environment": "producao"}, "t", disabled=True)),
        SETTINGS,
    )
    with pytest.raises(AccountDisabled) as info:
        await resolver.account_for("acme", A, Provider.FOCUS)
    assert info.value.cnpj == A and info.value.provider is Provider.FOCUS
    assert not info.value.retriable


async def test_lookups_are_cached_for_the_ttl_and_fresh_reads_past_it() -> None:
    now = [0.0]
    lookup = Lookup(account(A, Provider.FOCUS, {"environment": "producao"}, "token-A"))
    resolver = AccountResolver(lookup, SETTINGS, ttl=5.0, clock=lambda: now[0])
    for _ in range(3):
        await resolver.focus("acme", A)
    assert lookup.calls == 1
    lookup.rows[("acme", A, Provider.FOCUS)] = account(
        A, Provider.FOCUS, {"environment": "producao"}, "token-A2"
    )
    assert (await resolver.focus("acme", A)).token == "token-A"
    assert (await resolver.account_for("acme", A, Provider.FOCUS, fresh=True)).token == "token-A2"  # type: ignore[union-attr]
    now[0] = 6.0
    assert (await resolver.focus("acme", A)).token == "token-A2"


def test_secrets_never_show_in_a_repr_or_a_listing() -> None:
    acc = account(A, Provider.FOCUS, {"environment": "producao"}, "segredo-focus")
    creds = FocusCredentials("segredo-focus", Environment.PRODUCAO, "http://x")
    smtp = SmtpSender("h", 25, "none", "u", "segredo-smtp", "a@b", "n", 1.0)
    for shown in (repr(acc), repr(creds), repr(smtp), str(acc.public())):
        assert "segredo" not in shown
    assert acc.public()["has_secret"] is True


@pytest.mark.parametrize(
    ("provider", "cnpj", "config", "secret", "message"),
    [
        (Provider.FOCUS, A, {"environment": "producao"}, None, "needs its token"),
        (Provider.FOCUS, A, {"environment": "prod"}, "t", "environment must be"),
        (Provider.FOCUS, A, {}, "t", "needs 'environment'"),
        (Provider.FOCUS, "123", {"environment": "producao"}, "t", "14 digits"),
        (Provider.FOCUS, ANY_CNPJ, {"environment": "producao"}, "t", "belongs to one CNPJ"),
        (Provider.EMITES, A, {"host": "h", "port": "x"}, None, "not a valid int"),
        (Provider.EMITES, A, {"host": "h", "port": 70000}, None, "between 1 and 65535"),
        (Provider.EMITES, A, {"host": "h", "port": 1}, "s", "has no secret"),
        (Provider.SMTP, A, {"host": "h", "sender": "a@b", "tls": True}, None, "unknown smtp"),
        (Provider.SMTP, A, {"host": "h", "sender": "a@b", "security": "ssl"}, None, "security"),
    ],
)
def test_bad_accounts_are_refused_with_what_is_wrong(
    provider: Provider, cnpj: str, config: dict[str, Any], secret: str | None, message: str
) -> None:
    with pytest.raises(InvalidAccount, match=message):
        check_account(provider, cnpj, config, secret)


def test_good_accounts_are_normalised() -> None:
    assert check_account(Provider.EMITES, A, {"host": "h", "port": "9101"}, None) == {
        "host": "h",
        "port": 9101,
    }
