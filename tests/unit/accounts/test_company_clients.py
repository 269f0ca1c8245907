"""Which provider client a company's call goes through (no sockets: clients connect on first
use): each NFC-e shop's Emites endpoint, one pool per endpoint, the global one only for
NOTAFLOW_EMITES_CNPJ; each tenant's SMTP server, rebuilt when its account changes; a disabled
account is a permanent failure, never the global server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from notaflow.accounts import ANY_CNPJ, Account, AccountResolver, Provider
from notaflow.consumers.providers.emites import EmitesClient
from notaflow.consumers.providers.emites_accounts import EmitesByCompany
from notaflow.consumers.providers.mailer import Mailer, SmtpConfig
from notaflow.consumers.providers.mailer_accounts import MailerByTenant
from notaflow.errors import InvalidDocument, Permanent
from notaflow.settings import Settings

A, B, C = "51916585000125", "07504505000132", "11222333000181"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


class Lookup:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, Provider], Account] = {}

    def put(
        self,
        cnpj: str,
        provider: Provider,
        config: dict[str, Any],
        secret: str | None = None,
        disabled: bool = False,
    ) -> None:
        self.rows["acme", cnpj, provider] = Account(
            "acme", cnpj, provider, config, secret, NOW, NOW, NOW if disabled else None
        )  # fmt: skip

    async def get(self, tenant: str, cnpj: str, provider: Provider) -> Account | None:
        return self.rows.get((tenant, cnpj, provider))


async def test_each_shop_gets_its_own_emites_pool() -> None:
    lookup = Lookup()
    lookup.put(B, Provider.EMITES, {"host": "10.0.0.2", "port": 9101, "pool": 2})
    lookup.put(C, Provider.EMITES, {"host": "10.0.0.2", "port": 9101, "pool": 2})
    default = EmitesClient("10.0.0.1", 9100)
    clients = EmitesByCompany(default, A, AccountResolver(lookup, Settings(), ttl=0))
    assert await clients.client("acme", A) is default
    b = await clients.client("acme", B)
    assert (b.host, b.port, b.pool_size) == ("10.0.0.2", 9101, 2)
    assert await clients.client("acme", B) is b
    assert await clients.client("acme", C) is b  # one pool per endpoint
    with pytest.raises(InvalidDocument, match="empresa_nao_habilitada"):
        await clients.client("acme", "99888777000161")
    lookup.put(B, Provider.EMITES, {"host": "10.0.0.2", "port": 9101}, disabled=True)
    with pytest.raises(Permanent, match="desabilitada"):
        await clients.client("acme", B)
    # For notes already accepted (cancellation): the global endpoint serves any company.
    assert await EmitesByCompany(default, None).client("acme", C) is default
    await clients.aclose()


async def test_each_tenant_gets_its_own_smtp_server() -> None:
    lookup = Lookup()
    template = SmtpConfig(host="smtp.ours", sender_address="nf@ours", pause_between_sends=0.1,
                          local_hostname="notaflow", keep_alive=5.0)  # fmt: skip
    default = Mailer(template)
    mailers = MailerByTenant(default, AccountResolver(lookup, Settings(), ttl=0), template)
    assert await mailers.mailer("acme", A) is default
    lookup.put(ANY_CNPJ, Provider.SMTP, {"host": "smtp.acme", "port": 465, "security": "tls",
               "username": "nf", "sender": "nf@acme", "sender_name": "ACME"}, "pw")  # fmt: skip
    own = await mailers.mailer("acme", A)
    assert own is not None and own is not default
    cfg = own.config
    assert (cfg.host, cfg.port, cfg.security, cfg.username, cfg.password) == (
        "smtp.acme",
        465,
        "tls",
        "nf",
        "pw",
    )
    assert cfg.from_header == "ACME <nf@acme>"
    # What an account does not hold comes from ours: pacing, EHLO name, keep-alive.
    assert (cfg.pause_between_sends, cfg.local_hostname, cfg.keep_alive) == (0.1, "notaflow", 5.0)
    assert await mailers.mailer("acme", B) is own
    lookup.put(ANY_CNPJ, Provider.SMTP, {"host": "smtp2.acme", "sender": "nf@acme"})
    changed = await mailers.mailer("acme", A)
    assert changed is not None and changed is not own and changed.config.host == "smtp2.acme"
    assert changed.config.username is None and changed.config.password is None
    lookup.put(ANY_CNPJ, Provider.SMTP, {"host": "smtp2.acme", "sender": "nf@acme"},
               disabled=True)  # fmt: skip
    with pytest.raises(Permanent):
        await mailers.mailer("acme", A)
    await mailers.aclose()
