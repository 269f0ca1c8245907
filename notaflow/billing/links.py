"""Signed invoice links: a token that lets whoever holds it read one invoice (HTML and PDF)
until it expires, without credentials; the customer gets them in the invoice e-mails."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

LINK_TTL = 90 * 86400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_link(
    secret: str, tenant: str, uid: str, now: float | None = None, ttl: int = LINK_TTL
) -> str:
    """A token that lets whoever holds it read one invoice (HTML and PDF) until it expires."""
    if not secret:
        raise ValueError("no link signing secret configured")
    expires = int((now if now is not None else time.time()) + ttl)
    payload = f"{tenant}\n{uid}\n{expires}".encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_link(secret: str, token: str, now: float | None = None) -> tuple[str, str] | None:
    """(tenant, uid) of a valid, unexpired token; None otherwise."""
    if not secret:
        return None
    try:
        payload_b64, mac_b64 = token.split(".", 1)
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
    except (ValueError, TypeError):
        return None
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        tenant, uid, expires = payload.decode().split("\n")
        if int(expires) < (now if now is not None else time.time()):
            return None
    except ValueError:
        return None
    return tenant, uid


@dataclass(frozen=True)
class Links:
    public_url: str
    secret: str

    def for_invoice(self, tenant: str, uid: str) -> tuple[str, str]:
        """(HTML view, PDF) URLs a customer opens without credentials."""
        token = sign_link(self.secret, tenant, uid)
        base = f"{self.public_url.rstrip('/')}/api/v3.2/invoice/{uid}"
        return f"{base}/html?token={token}", f"{base}/pdf?token={token}"
