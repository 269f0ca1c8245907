"""Standard Webhooks signatures (Svix's scheme) of the deliveries notaflow sends to clients.

Core module: the ingress makes a hook's secret when the hook is created (`new_secret`), the
notification consumer signs each delivery with it (`sign`), and `verify` is the receiver's side
(tests, and clients reading our code). Pure functions over bytes, tested exhaustively.

    WebhookVerificationError    a signature check failed; the message says which part
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

from notaflow.errors import NotaflowError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300


class WebhookVerificationError(NotaflowError):
    """A Standard Webhooks signature check failed; the message says which part."""


def _secret_key(secret: str) -> bytes:
    # `whsec_<base64>`; without the prefix the whole string is the base64 key, like the
    # official libraries (which also tolerate missing padding).
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not valid base64") from exc
    if not key:
        raise ValueError("webhook secret may not be empty")
    return key


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    digest = _digest(_secret_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check a delivery the way a receiver should: raw body bytes, timestamp within
    ±`tolerance` seconds of `now`, any of the space-separated `v1` signatures matching."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    ts_header = lowered.get("webhook-timestamp")
    sig_header = lowered.get("webhook-signature")
    if not (msg_id and ts_header and sig_header):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(ts_header)
    except ValueError:
        raise WebhookVerificationError(f"invalid webhook-timestamp {ts_header!r}") from None
    if timestamp < now - tolerance:
        raise WebhookVerificationError("message timestamp too old")
    if timestamp > now + tolerance:
        raise WebhookVerificationError("message timestamp too new")
    try:
        key = _secret_key(secret)
    except ValueError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    expected = _digest(key, msg_id, timestamp, body)
    for candidate in sig_header.split():
        version, _, encoded = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(expected, given):
            return
    raise WebhookVerificationError("no matching signature found")
