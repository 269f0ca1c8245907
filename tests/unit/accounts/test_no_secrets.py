"""Account secrets stay out of what notaflow writes: log lines (the JSON formatter with the
redaction filter, whatever object is logged), the reprs of everything that holds a secret,
and the errors a bad or missing key raises."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest

from notaflow.account_keys import SecretBox, new_key
from notaflow.accounts import (
    Account,
    AccountDisabled,
    Environment,
    FocusCredentials,
    Provider,
    SmtpSender,
)
from notaflow.consumers.providers.mailer import SmtpConfig
from notaflow.logs import JsonFormatter, RedactionFilter

TOKEN = "tok-segredo-da-empresa-0123456789"
PASSWORD = "senha-smtp-segredo-42"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def holders() -> list[object]:
    return [
        Account("acme", "51916585000125", Provider.FOCUS, {"environment": "producao"},
                TOKEN, NOW, NOW),
        FocusCredentials(TOKEN, Environment.PRODUCAO, "https://api.focusnfe.com.br"),
        SmtpSender("smtp.acme", 587, "starttls", "nf", PASSWORD, "nf@acme.com", "ACME", 30.0),
        SmtpConfig(host="smtp.acme", sender_address="nf@acme.com", username="nf",
                   password=PASSWORD),
    ]  # fmt: skip


def test_no_holder_shows_its_secret_in_its_repr() -> None:
    for holder in holders():
        assert TOKEN not in repr(holder) and PASSWORD not in repr(holder), type(holder)


def test_log_lines_never_carry_an_account_secret() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter("test"))
    log = logging.getLogger("test.accounts.secrets")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        for holder in holders():
            log.info("account %s", holder)
            log.info("as extra", extra={"account": holder})
        # What the admin API and the CLI receive: the secret under its own key.
        body = {"tenant": "acme", "provider": "focus", "secret": TOKEN}
        log.info("body %s", body, extra={"body": body, "secret": TOKEN, "token": TOKEN})
        log.info("smtp %s", {"password": PASSWORD, "config": {"host": "h"}})
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and all(json.loads(line) for line in lines)
    assert TOKEN not in stream.getvalue() and PASSWORD not in stream.getvalue()


def test_errors_name_the_company_never_the_secret() -> None:
    disabled = AccountDisabled("acme", "51916585000125", Provider.FOCUS)
    assert "51916585000125" in str(disabled) and TOKEN not in str(disabled)
    sealed = SecretBox([new_key()]).encrypt(TOKEN)
    with pytest.raises(Exception) as info:
        SecretBox([new_key()]).decrypt(sealed)
    assert TOKEN not in str(info.value) and sealed not in str(info.value)
