"""E-mail address rules shared by every dialect (syntax only: no DNS at request time)."""

from __future__ import annotations

from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

MAX_PER_REQUEST = 10  # Focus: "Limitado a 10 emails por vez"


@lru_cache(maxsize=4096)
def valid_email(address: str) -> bool:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True
