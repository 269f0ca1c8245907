"""Where notaflow may send a client's webhook: the SSRF policy, as pure functions.

One policy for both moments (issue 19): the ingress applies it when a hook is created (so a
client learns at once that `http://169.254.169.254/` or a name resolving to 10.0.0.5 will never
be called, as the README promises), and the notification consumer applies it again at each
delivery, to the addresses it then connects to (DNS may have changed since). Core module: the
ingress and the consumers both import it, never each other.

    DestinationError (ValueError)   the URL, its addresses or its header break the policy
    Unresolved                      the name has no address now (may have later)
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable

import httpx

from notaflow.errors import NotaflowError

DEFAULT_PORTS = {"http": 80, "https": 443}
TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Headers a hook's configuration must not override: ours, or the framing of the request.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "user-agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)
# NAT64 (RFC 6052) embeds an IPv4 address that a NAT64 gateway will reach.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Characters no URL we call may carry: controls (CR/LF would split a request line), spaces.
_URL_BAD = re.compile(r"[\x00-\x20\x7f]")


class DestinationError(NotaflowError, ValueError):
    """The destination breaks the policy; the message says why (in English, for logs)."""


class Unresolved(NotaflowError):
    """The host has no address at the moment."""


# A hook's URL is parsed at every delivery, and httpx's parser is ~12 us a URL: the answers
# for the URLs in use are kept (httpx.URL is immutable; a refusal raises and is not kept).
@functools.lru_cache(maxsize=4096)
def parse_destination(url: str) -> tuple[httpx.URL, str, int]:
    # The same parser as the one that sends: no differential between check and use.
    if _URL_BAD.search(url):
        raise DestinationError("control characters or spaces in the URL")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise DestinationError(f"invalid URL: {exc}") from exc
    if parsed.scheme not in DEFAULT_PORTS:
        raise DestinationError(f"scheme {parsed.scheme!r} not allowed (http or https only)")
    if parsed.userinfo:
        raise DestinationError("credentials in the URL are not allowed")
    if not parsed.host:
        raise DestinationError("URL has no host")
    return parsed, parsed.host, parsed.port or DEFAULT_PORTS[parsed.scheme]


def literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 host itself
            return is_forbidden(ip.ipv4_mapped)
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and is_forbidden(embedded):
            return True
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global  # also shared address space 100.64/10, documentation ranges
    )


def check_addresses(host: str, addresses: Iterable[str]) -> list[str]:
    """The distinct addresses, each checked; DestinationError if any is not public."""
    checked: list[str] = []
    for address in addresses:
        ip = literal(address.split("%", 1)[0])  # drop an IPv6 zone id ("fe80::1%eth0")
        if ip is None:
            raise DestinationError(f"{host} resolved to a non-IP address {address!r}")
        if is_forbidden(ip):
            raise DestinationError(f"{host} resolves to a non-public address {ip}")
        if str(ip) not in checked:
            checked.append(str(ip))
    if not checked:
        raise Unresolved(f"{host} did not resolve to any address")
    return checked


def check_header(name: str, value: str) -> None:
    if not TOKEN.match(name) or name.lower() in RESERVED_HEADERS:
        raise DestinationError(f"authorization header name {name!r} not allowed")
    if BAD_VALUE.search(value):
        raise DestinationError("authorization value contains control characters")
    if not value.isascii():  # no encoding of it is agreed on: no receiver could read it back
        raise DestinationError("authorization value is not ASCII")
