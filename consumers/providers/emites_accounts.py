"""The Emites-Client of each NFC-e company (issue 15): an Emites-Client issues for one CNPJ,
so every shop has its own endpoint (its provider account, notaflow/accounts.py); the global
NOTAFLOW_EMITES_* endpoint serves NOTAFLOW_EMITES_CNPJ, as before accounts existed. One
connection pool per endpoint, opened on first use and kept."""

from __future__ import annotations

from notaflow.accounts import AccountDisabled, AccountResolver, EmitesEndpoint, Provider
from notaflow.consumers.providers.emites import EmitesClient
from notaflow.errors import InvalidDocument, Permanent


class EmitesByCompany:
    def __init__(
        self,
        default: EmitesClient | None,
        default_cnpj: str | None,
        accounts: AccountResolver | None = None,
    ) -> None:
        """`default` serves `default_cnpj` (None: every company without an account, for a
        caller that only handles notes already accepted for a company)."""
        self._default = default
        self._default_cnpj = default_cnpj
        self._accounts = accounts
        self._pools: dict[EmitesEndpoint, EmitesClient] = {}

    async def client(self, tenant: str, cnpj: str) -> EmitesClient:
        """The company's Emites-Client; `InvalidDocument` (empresa_nao_habilitada) when it has
        none, `Permanent` when its account is disabled."""
        account = None
        if self._accounts is not None:
            try:
                account = await self._accounts.account(tenant, cnpj, Provider.EMITES)
            except AccountDisabled as exc:
                raise Permanent(str(exc)) from exc
        if account is None:
            if self._default is not None and self._default_cnpj in (None, cnpj):
                return self._default
            raise InvalidDocument("cnpj", "empresa_nao_habilitada")
        assert self._accounts is not None
        endpoint = self._accounts.credentials_of(account)
        assert isinstance(endpoint, EmitesEndpoint)
        pool = self._pools.get(endpoint)
        if pool is None:
            pool = EmitesClient(
                endpoint.host,
                endpoint.port,
                pool_size=endpoint.pool,
                request_timeout=endpoint.timeout,
            )
            self._pools[endpoint] = pool
        return pool

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
