"""The SMTP server each tenant's e-mail leaves from (issue 15): a tenant may send through its
own server and From address (its SMTP account, for every company or per CNPJ); otherwise the
global NOTAFLOW_SMTP_* server. One `Mailer` per account, replaced when the account changes
(a rotated password, a new host)."""

from __future__ import annotations

import dataclasses
from typing import cast

from notaflow.accounts import AccountDisabled, AccountResolver, Provider, SmtpSender
from notaflow.consumers.providers.mailer import Mailer, Security, SmtpConfig
from notaflow.errors import Permanent


class MailerByTenant:
    def __init__(
        self,
        default: Mailer | None,
        accounts: AccountResolver | None = None,
        template: SmtpConfig | None = None,
    ) -> None:
        """`template` gives a tenant's mailer what accounts do not hold (pause between sends,
        EHLO name, keep-alive); the default mailer's config, else SmtpConfig's defaults."""
        self.default = default
        self._accounts = accounts
        self._template = template or (default.config if default else None)
        self._mailers: dict[tuple[str, str], Mailer] = {}

    async def mailer(self, tenant: str, cnpj: str) -> Mailer | None:
        """The tenant's mailer (None: e-mail is configured nowhere); `Permanent` when
        its account is disabled (never the global server instead: its From is not the
        tenant's)."""
        if self._accounts is None:
            return self.default
        try:
            account = await self._accounts.account(tenant, cnpj, Provider.SMTP)
        except AccountDisabled as exc:
            raise Permanent(str(exc)) from exc
        if account is None:
            return self.default
        sender = self._accounts.credentials_of(account)
        assert isinstance(sender, SmtpSender)
        config = self._config(sender)
        key = (account.tenant, account.cnpj)
        kept = self._mailers.get(key)
        if kept is not None and kept.config == config:
            return kept
        if kept is not None:
            await kept.aclose()
        self._mailers[key] = mailer = Mailer(config)
        return mailer

    def _config(self, sender: SmtpSender) -> SmtpConfig:
        base = self._template or SmtpConfig(host="", sender_address="")
        # SmtpConfig wants a username and a password together, or neither.
        password = (sender.password or "") if sender.username else None
        return dataclasses.replace(
            base,
            host=sender.host,
            port=sender.port,
            security=cast(Security, sender.security),
            username=sender.username,
            password=password,
            timeout=sender.timeout,
            sender_address=sender.sender,
            sender_name=sender.sender_name,
        )

    async def aclose(self) -> None:
        for mailer in self._mailers.values():
            await mailer.aclose()
        self._mailers.clear()
