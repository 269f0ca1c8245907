"""Provider accounts: the credentials a tenant's company (CNPJ) uses at each provider.

A tenant's emitter CNPJs each have their own Focus token and environment (Focus gives every
company its token), NFC-e CNPJs their own Emites-Client endpoint, and a tenant may send its
e-mail through its own SMTP server. An account with `cnpj == ANY_CNPJ` covers every company of
the tenant (the usual case for SMTP). Nothing configured: the global settings
(NOTAFLOW_FOCUS_TOKEN, NOTAFLOW_EMITES_*, NOTAFLOW_SMTP_*) are the account, so a single-company
install (and `notaflow dev`) needs no set-up.

This module is the pure part: what an account holds, how it turns into credentials, and the
resolver, which asks a `AccountLookup` (the store, notaflow/store/accounts.py) through a small
cache. Secrets arrive here decrypted; they are kept in `repr=False` fields so a logged
dataclass never shows them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from notaflow.cache import SharedLoadCache
from notaflow.errors import NotaflowError
from notaflow.settings import Settings

# The account of every company of a tenant (used when the CNPJ has none of its own).
ANY_CNPJ = "*"


class Provider(StrEnum):
    FOCUS = "focus"
    EMITES = "emites"
    SMTP = "smtp"


class Environment(StrEnum):
    HOMOLOGACAO = "homologacao"
    PRODUCAO = "producao"


class AccountDisabled(NotaflowError):
    """The company's account at this provider is disabled: new commands are refused (the
    ingress answers 403 in the route's dialect, code `conta_desabilitada`)."""

    retriable = False

    def __init__(self, tenant: str, cnpj: str, provider: Provider) -> None:
        super().__init__(f"conta {provider} do CNPJ {cnpj} desabilitada (tenant {tenant})")
        self.tenant, self.cnpj, self.provider = tenant, cnpj, provider


class InvalidAccount(NotaflowError):
    """An account's settings are refused (unknown field, wrong type, missing secret)."""

    retriable = False


@dataclass(frozen=True)
class FocusCredentials:
    token: str = field(repr=False)
    environment: Environment
    base_url: str


@dataclass(frozen=True)
class EmitesEndpoint:
    host: str
    port: int
    pool: int
    timeout: float


@dataclass(frozen=True)
class SmtpSender:
    host: str
    port: int
    security: str  # "starttls" | "tls" | "none"
    username: str | None
    password: str | None = field(repr=False)
    sender: str
    sender_name: str
    timeout: float


Credentials = FocusCredentials | EmitesEndpoint | SmtpSender


@dataclass(frozen=True)
class Account:
    """One row of the accounts table, secret decrypted (or None when it has none).
    `config` holds the non-secret fields of the provider (see `FIELDS`)."""

    tenant: str
    cnpj: str
    provider: Provider
    config: Mapping[str, Any]
    secret: str | None = field(repr=False)
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None = None
    # Whether the row holds a secret: a listing reads the rows without decrypting them.
    has_secret: bool = False

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None

    def public(self) -> dict[str, Any]:
        """What list answers show: everything but the secret (only whether there is one)."""
        return {
            "tenant": self.tenant,
            "cnpj": self.cnpj,
            "provider": str(self.provider),
            "config": dict(self.config),
            "has_secret": self.has_secret or self.secret is not None,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
        }


# The non-secret fields of each provider's `config` (type, required) and what the secret is.
FIELDS: Mapping[Provider, Mapping[str, tuple[type, bool]]] = {
    Provider.FOCUS: {"environment": (str, True)},
    Provider.EMITES: {
        "host": (str, True),
        "port": (int, True),
        "pool": (int, False),
        "timeout": (float, False),
    },
    Provider.SMTP: {
        "host": (str, True),
        "port": (int, False),
        "security": (str, False),
        "username": (str, False),
        "sender": (str, True),
        "sender_name": (str, False),
        "timeout": (float, False),
    },
}
SECRET_NAME: Mapping[Provider, str | None] = {
    Provider.FOCUS: "token",
    Provider.EMITES: None,
    Provider.SMTP: "password",
}
_SECURITY = ("starttls", "tls", "none")


def check_account(
    provider: Provider, cnpj: str, config: Mapping[str, Any], secret: str | None
) -> dict[str, Any]:
    """The config normalised, or `InvalidAccount` naming what is wrong. Pure: the CLI and the
    admin API both call it before anything is stored."""
    if cnpj != ANY_CNPJ and not (len(cnpj) == 14 and cnpj.isdigit()):
        raise InvalidAccount(f"cnpj must be 14 digits or {ANY_CNPJ!r}, not {cnpj!r}")
    if provider is not Provider.SMTP and cnpj == ANY_CNPJ:
        raise InvalidAccount(f"a {provider} account belongs to one CNPJ")
    spec = FIELDS[provider]
    unknown = sorted(set(config) - set(spec))
    if unknown:
        raise InvalidAccount(f"unknown {provider} field {unknown[0]!r} (known: {', '.join(spec)})")
    out: dict[str, Any] = {}
    for name, (kind, required) in spec.items():
        value = config.get(name)
        if value is None or value == "":
            if required:
                raise InvalidAccount(f"{provider} account needs {name!r}")
            continue
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise InvalidAccount(f"{name}={value!r} is not a valid {kind.__name__}") from None
        out[name] = value
    if provider is Provider.FOCUS and out["environment"] not in tuple(Environment):
        raise InvalidAccount(f"environment must be one of {', '.join(Environment)}")
    if provider is Provider.EMITES and not 0 < out["port"] < 65536:
        raise InvalidAccount("port must be between 1 and 65535")
    if provider is Provider.SMTP and out.get("security", "starttls") not in _SECURITY:
        raise InvalidAccount(f"security must be one of {', '.join(_SECURITY)}")
    secret_name = SECRET_NAME[provider]
    if secret_name is None and secret:
        raise InvalidAccount(f"a {provider} account has no secret")
    if provider is Provider.FOCUS and not secret:
        raise InvalidAccount("a focus account needs its token")
    return out


def focus_url(settings: Settings, environment: Environment) -> str:
    return (
        settings.focus_production_url
        if environment is Environment.PRODUCAO
        else settings.focus_base_url
    )


def credentials(account: Account, settings: Settings) -> Credentials:
    """An account's credentials, fields it leaves out taken from the global settings."""
    c = account.config
    if account.provider is Provider.FOCUS:
        env = Environment(c["environment"])
        return FocusCredentials(account.secret or "", env, focus_url(settings, env))
    if account.provider is Provider.EMITES:
        return EmitesEndpoint(
            c["host"],
            int(c["port"]),
            int(c.get("pool", settings.emites_pool)),
            float(c.get("timeout", settings.emites_timeout)),
        )
    return SmtpSender(
        host=c["host"],
        port=int(c.get("port", settings.smtp_port)),
        security=c.get("security", settings.smtp_security),
        username=c.get("username") or None,
        password=account.secret,
        sender=c["sender"],
        sender_name=c.get("sender_name", settings.smtp_sender_name),
        timeout=float(c.get("timeout", settings.smtp_timeout)),
    )


def default_credentials(settings: Settings, provider: Provider) -> Credentials:
    """The global settings as an account: what every company without one uses."""
    if provider is Provider.FOCUS:
        env = (
            Environment.PRODUCAO
            if settings.focus_base_url == settings.focus_production_url
            else Environment.HOMOLOGACAO
        )
        return FocusCredentials(settings.focus_token, env, settings.focus_base_url)
    if provider is Provider.EMITES:
        return EmitesEndpoint(
            settings.emites_host,
            settings.emites_port,
            settings.emites_pool,
            settings.emites_timeout,
        )
    return SmtpSender(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,
        username=settings.smtp_username or None,
        password=settings.smtp_password or None,
        sender=settings.smtp_sender,
        sender_name=settings.smtp_sender_name,
        timeout=settings.smtp_timeout,
    )


def choose(
    tenant: str, cnpj: str, provider: Provider, own: Account | None, tenant_wide: Account | None
) -> Account | None:
    """Which account applies: the CNPJ's own, else the tenant's for every CNPJ, else None (the
    global default). A disabled account refuses; it does not fall through to the default,
    or disabling a company would quietly send its notes with the operator's token."""
    for account in (own, tenant_wide):
        if account is not None:
            if account.disabled:
                raise AccountDisabled(tenant, cnpj, provider)
            return account
    return None


class AccountLookup(Protocol):
    """What the resolver reads (notaflow.store.accounts.AccountStore)."""

    async def get(self, tenant: str, cnpj: str, provider: Provider) -> Account | None: ...


class AccountResolver:
    """`account_for(tenant, cnpj, provider)`: the credentials a call on behalf of this company
    uses. Accounts change rarely and every note asks, so each lookup is kept `ttl` seconds
    (a rotated secret or a disabled account shows within `ttl`); `fresh=True` reads past it."""

    def __init__(
        self,
        lookup: AccountLookup,
        settings: Settings,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._settings = settings
        self._cache: SharedLoadCache[tuple[str, str, Provider], Account | None] = SharedLoadCache(
            self._load, ttl, clock=clock
        )

    def _load(self, key: tuple[str, str, Provider]) -> Awaitable[Account | None]:
        return self._lookup.get(*key)

    async def account(
        self, tenant: str, cnpj: str, provider: Provider, fresh: bool = False
    ) -> Account | None:
        """The account that applies (None: the global default); `AccountDisabled` if it is
        disabled."""
        own = await self._cache.get((tenant, cnpj, provider), fresh)
        wide = None if own is not None else await self._cache.get((tenant, ANY_CNPJ, provider))
        return choose(tenant, cnpj, provider, own, wide)

    async def account_for(
        self, tenant: str, cnpj: str, provider: Provider, fresh: bool = False
    ) -> Credentials:
        account = await self.account(tenant, cnpj, provider, fresh)
        if account is None:
            return default_credentials(self._settings, provider)
        return credentials(account, self._settings)

    def credentials_of(self, account: Account) -> Credentials:
        return credentials(account, self._settings)

    async def focus(self, tenant: str, cnpj: str) -> FocusCredentials:
        creds = await self.account_for(tenant, cnpj, Provider.FOCUS)
        assert isinstance(creds, FocusCredentials)
        return creds

    async def emites(self, tenant: str, cnpj: str) -> EmitesEndpoint:
        creds = await self.account_for(tenant, cnpj, Provider.EMITES)
        assert isinstance(creds, EmitesEndpoint)
        return creds

    async def smtp(self, tenant: str, cnpj: str = ANY_CNPJ) -> SmtpSender:
        creds = await self.account_for(tenant, cnpj, Provider.SMTP)
        assert isinstance(creds, SmtpSender)
        return creds
