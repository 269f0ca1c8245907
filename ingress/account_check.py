"""The door check of provider accounts (issue 15): a command for a company whose account at
the provider is disabled is refused before anything is claimed or published, 403
`conta_desabilitada` in the Focus dialect (every emission and cancellation route is Focus's).
A company without an account uses the global settings and passes."""

from __future__ import annotations

from notaflow.accounts import Account, AccountDisabled, Provider
from notaflow.ingress.deps import IngressDeps
from notaflow.ingress.dialects import FocusError


def provider_of(kind: str) -> Provider:
    """The provider that serves a document kind: Emites-Client for NFC-e, Focus otherwise."""
    return Provider.EMITES if kind == "nfce" else Provider.FOCUS


async def refuse_disabled(
    d: IngressDeps, tenant: str, cnpj: str, provider: Provider
) -> Account | None:
    """The company's own account at the provider (None: it uses the global settings); a
    disabled one is refused here, 403 `conta_desabilitada`."""
    try:
        return await d.accounts.account(tenant, cnpj, provider)
    except AccountDisabled as exc:
        raise FocusError(
            403,
            "conta_desabilitada",
            f"Conta do emitente {cnpj} no provedor ({provider}) desabilitada pelo operador: "
            "novos comandos são recusados",
        ) from exc
