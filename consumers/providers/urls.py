"""Where a provider adapter may send its credentials: the configured base's host, nowhere else.

A provider names files by path in its answers and callbacks (`caminho_xml_nota_fiscal`). A
callback is only as trustworthy as a static header value, so such a path is a claim: it is
resolved here against the configured base as URL objects (never by string concatenation, where
`/x@evil.test` or a non-ASCII character could change the host) and refused unless it stays on
that origin. Pure functions, so every hostile shape is tested without a network.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import httpx

from notaflow.errors import Permanent


class ForeignPath(Permanent):
    """A path that would leave the provider's host (or is not a plain path at all)."""


def origin(url: httpx.URL) -> tuple[str, str, int]:
    return url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)


def on_provider_host(base: httpx.URL, named: str) -> httpx.URL:
    """The URL of a file the provider `named`, on `base`'s origin, or ForeignPath.

    Accepted: an absolute path (`/notas_fiscais_servico/X.xml`), or a full URL on the very same
    scheme, host and port as `base` (without user info). Everything else is refused: other
    hosts, scheme-relative `//host/...`, relative paths, backslashes, control characters and
    spaces (no provider names a file with them; browsers and proxies read them differently).
    """
    if not named or len(named) > 2048:
        raise ForeignPath("caminho vazio ou longo demais")
    if any(ord(c) < 0x21 or c == "\x7f" or c == "\\" for c in named):
        raise ForeignPath("caminho com caracteres de controle, espaço ou barra invertida")
    try:
        url = httpx.URL(named)
    except httpx.InvalidURL as exc:
        raise ForeignPath(f"caminho inválido: {exc}") from exc
    if url.scheme or url.host or named.startswith("//"):
        if url.userinfo or origin(url) != origin(base):
            raise ForeignPath("caminho fora do host do provedor")
        target = base.copy_with(raw_path=url.raw_path)  # a full URL names its own path
    elif named.startswith("/"):
        target = base.copy_with(raw_path=base.raw_path.rstrip(b"/") + url.raw_path)
    else:
        raise ForeignPath("caminho relativo sem barra inicial")
    # Belt and braces: whatever the parsing above let through, the request goes to base's origin.
    if origin(target) != origin(base) or target.userinfo:
        raise ForeignPath("caminho fora do host do provedor")
    return target


# A path as Focus names its files (`/arquivos/.../NFSe123.xml`): segments of unreserved
# characters, none of them "." or "..", so nothing a URL parser could read as a host, a query, an
# escape or a step up. Appended to the base's path as it is, it is what `on_provider_host`
# resolves it to (a test holds the two together), without parsing two URLs per download.
_PLAIN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)+")


def provider_path(base: httpx.URL, named: str) -> bytes:
    """The raw path of `on_provider_host(base, named)`, or ForeignPath: what an exchange with
    base's origin needs (it always goes to that origin)."""
    if len(named) <= 2048 and _PLAIN_PATH.fullmatch(named):
        return base.raw_path.rstrip(b"/") + named.encode("ascii")
    return on_provider_host(base, named).raw_path


def segment(value: str) -> str:
    """One path segment of our own making (a provider ref): percent-encoded, `/` included."""
    return quote(value, safe="")
