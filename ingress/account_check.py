"""The door check of provider accounts (issue 15): a command for a company whose account at
the provider is disabled is refused before anything is claimed or published, 403
`conta_desabilitada` in the Focus dialect (every emission and cancellation route is Focus's).
A company without an account uses the global settings and passes."""

from __future__ import annotations

from notaflow.accounts import AccountDisabled, Provider
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.dialects import FocusError


def provider_of(kind: str) -> Provider:
    """The provider that serves a document kind: Emites-Client for NFC-e, Focus otherwise."""
    return Provider.EMITES if kind == "nfce" else Provider.FOCUS


async def refuse_disabled(d: IngressDeps, tenant: str, cnpj: str, provider: Provider) -> None:
    try:
        await d.accounts.account(tenant, cnpj, provider)
    except AccountDisabled as exc:
        raise FocusError(
            403,
            "conta_desabilitada",
            f"Conta do emitente {cnpj} no provedor ({provider}) desabilitada pelo operador: "
            "novos comandos são recusados",
        ) from exc


async def has_account(d: IngressDeps, tenant: str, cnpj: str, provider: Provider) -> bool:
    """Whether the company has an account of its own at the provider (a disabled one counts:
    `refuse_disabled` then says so)."""
    try:
        return await d.accounts.account(tenant, cnpj, provider) is not None
    except AccountDisabled:
        return True
