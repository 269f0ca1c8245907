"""Encryption at rest of provider account secrets (Focus tokens, SMTP passwords).

`cryptography`'s Fernet (AES-128-CBC + HMAC-SHA256, authenticated, with a timestamp) through
MultiFernet: the first key of NOTAFLOW_ACCOUNT_KEYS encrypts, every listed key decrypts, so a
key rotation is "put a new key in front, run `notaflow account reencrypt`, drop the old key".
Keys are 32 url-safe base64 bytes (`notaflow account new-key` prints one).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from notaflow.errors import ConfigurationError, NotaflowError


class SecretUnreadable(NotaflowError):
    """A stored secret no configured key opens (its key was dropped too early, or the row was
    altered)."""

    retriable = False


def new_key() -> str:
    return Fernet.generate_key().decode("ascii")


class SecretBox:
    """Encrypts and decrypts account secrets with the configured keys (newest first)."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigurationError(
                "provider account secrets need a key: set NOTAFLOW_ACCOUNT_KEYS "
                "(`notaflow account new-key` prints one)"
            )
        try:
            self._keys = [Fernet(k.encode("ascii")) for k in keys]
        except (ValueError, UnicodeEncodeError):
            # Never the key itself in the message: it is a secret.
            raise ConfigurationError(
                "NOTAFLOW_ACCOUNT_KEYS holds a value that is no Fernet key "
                "(32 url-safe base64-encoded bytes)"
            ) from None
        self._box = MultiFernet(self._keys)

    @classmethod
    def from_setting(cls, value: str) -> SecretBox:
        return cls([k.strip() for k in value.split(",") if k.strip()])

    def encrypt(self, secret: str) -> str:
        return self._box.encrypt(secret.encode("utf-8")).decode("ascii")

    def decrypt(self, sealed: str) -> str:
        try:
            return self._box.decrypt(sealed.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SecretUnreadable(
                "an account secret cannot be decrypted with any key of NOTAFLOW_ACCOUNT_KEYS"
            ) from None

    def is_current(self, sealed: str) -> bool:
        """Whether the newest key sealed it (re-encryption skips those)."""
        try:
            self._keys[0].decrypt(sealed.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def reseal(self, sealed: str) -> str:
        """The same secret under the newest key (`MultiFernet.rotate`)."""
        try:
            return self._box.rotate(sealed.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise SecretUnreadable(
                "an account secret cannot be decrypted with any key of NOTAFLOW_ACCOUNT_KEYS"
            ) from None
