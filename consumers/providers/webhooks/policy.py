"""The SSRF policy at delivery time: resolve the hook's host and check every address it has
now (DNS may have changed since the hook was created). The policy itself is
`notaflow.destinations`, also applied by the ingress when a hook is created; this module
resolves, and maps its refusals to the consumer's errors: a refused destination is permanent
(`DestinationRefused`), a name that does not resolve now is transient.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import Awaitable, Callable, Iterable

import httpx

from notaflow import destinations
from notaflow.errors import Permanent, Transient

#: (host, port) -> addresses; sync for `check_destination`, sync or async elsewhere.
SyncResolver = Callable[[str, int], Iterable[str]]
Resolver = Callable[[str, int], Iterable[str] | Awaitable[Iterable[str]]]

literal = destinations.literal


class DestinationRefused(Permanent):
    """The webhook URL is refused by the SSRF policy; retrying cannot help."""


def _parse_destination(url: str) -> tuple[httpx.URL, str, int]:
    try:
        return destinations.parse_destination(url)
    except destinations.DestinationError as exc:
        raise DestinationRefused(str(exc)) from exc


def parsed_url(url: str) -> httpx.URL:
    """`url` as the policy checked it (and as the sender sends to it)."""
    return _parse_destination(url)[0]


def _check_addresses(host: str, addresses: Iterable[str]) -> list[str]:
    try:
        return destinations.check_addresses(host, addresses)
    except destinations.DestinationError as exc:
        raise DestinationRefused(str(exc)) from exc
    except destinations.Unresolved as exc:
        raise Transient(str(exc)) from exc


def check_auth_header(name: str, value: str) -> None:
    """The hook's own header (its `authorization` value) may not smuggle framing or ours."""
    try:
        destinations.check_header(name, value)
    except destinations.DestinationError as exc:
        raise DestinationRefused(str(exc)) from exc


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _loop_getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def check_destination(url: str, allow_private: bool, resolver: SyncResolver | None = None) -> None:
    """Raise `DestinationRefused` unless `url` is http(s), has a host and no credentials, and
    (unless `allow_private`) every address of its host is public. `resolver(host, port)`
    defaults to a blocking `socket.getaddrinfo`; DNS failure raises `Transient`."""
    _, host, port = _parse_destination(url)
    if allow_private:
        return
    address = literal(host)
    if address is not None:
        _check_addresses(host, [str(address)])
        return
    try:
        addresses = list((resolver or _getaddrinfo)(host, port))
    except OSError as exc:
        raise Transient(f"cannot resolve {host}: {exc}") from exc
    _check_addresses(host, addresses)


async def resolve_and_check(
    url: str, allow_private: bool, resolver: Resolver | None = None
) -> list[str]:
    """Resolve the URL's host (`resolver(host, port)`, sync or async; default
    `loop.getaddrinfo`) and answer its addresses, all checked unless `allow_private`."""
    _, host, port = _parse_destination(url)
    address = literal(host)
    if address is not None:
        addresses: Iterable[str] = [str(address)]
    else:
        try:
            answer = (resolver or _loop_getaddrinfo)(host, port)
            addresses = await answer if inspect.isawaitable(answer) else answer
            addresses = list(addresses)
        except OSError as exc:
            raise Transient(f"cannot resolve {host}: {exc}") from exc
    if allow_private:
        unique = list(dict.fromkeys(a.split("%", 1)[0] for a in addresses))
        if not unique:
            raise Transient(f"{host} did not resolve to any address")
        return unique
    return _check_addresses(host, addresses)
