"""Account secrets at rest: the round trip, rotation (a new key seals, old keys still open, a
re-seal moves a secret to the newest key), and the refusals (no key, a bad key, a dropped key)."""

from __future__ import annotations

import pytest

from notaflow.account_keys import SecretBox, SecretUnreadable, new_key
from notaflow.errors import ConfigurationError

TOKEN = "focus-token-da-empresa-A-1234567890"


def test_round_trip_hides_the_secret() -> None:
    box = SecretBox([new_key()])
    sealed = box.encrypt(TOKEN)
    assert TOKEN not in sealed
    assert box.decrypt(sealed) == TOKEN
    # Fernet is randomised: the same secret sealed twice gives two texts.
    assert box.encrypt(TOKEN) != sealed


def test_a_new_key_seals_and_the_old_one_still_opens() -> None:
    old, new = new_key(), new_key()
    sealed_old = SecretBox([old]).encrypt(TOKEN)
    rotated = SecretBox([new, old])
    assert rotated.decrypt(sealed_old) == TOKEN
    assert not rotated.is_current(sealed_old)
    sealed_new = rotated.encrypt(TOKEN)
    assert rotated.is_current(sealed_new)
    # Sealed with the newest key only: the old key alone cannot open it.
    with pytest.raises(SecretUnreadable):
        SecretBox([old]).decrypt(sealed_new)


def test_reseal_moves_a_secret_to_the_newest_key() -> None:
    old, new = new_key(), new_key()
    sealed_old = SecretBox([old]).encrypt(TOKEN)
    resealed = SecretBox([new, old]).reseal(sealed_old)
    # The old key can leave now.
    assert SecretBox([new]).decrypt(resealed) == TOKEN


def test_a_dropped_key_leaves_its_secrets_unreadable_with_a_clear_error() -> None:
    sealed = SecretBox([new_key()]).encrypt(TOKEN)
    box = SecretBox([new_key()])
    with pytest.raises(SecretUnreadable, match="NOTAFLOW_ACCOUNT_KEYS"):
        box.decrypt(sealed)
    with pytest.raises(SecretUnreadable):
        box.reseal(sealed)
    with pytest.raises(SecretUnreadable):
        box.decrypt(sealed[:-4] + "AAAA")  # altered


def test_keys_from_the_setting() -> None:
    a, b = new_key(), new_key()
    box = SecretBox.from_setting(f" {a} , {b},")
    assert SecretBox([b]).decrypt(SecretBox([b]).encrypt("x")) == "x"
    assert box.decrypt(SecretBox([b]).encrypt("x")) == "x"
    assert SecretBox([a]).decrypt(box.encrypt("y")) == "y"  # the first key seals


def test_no_key_or_a_bad_key_is_a_configuration_error_that_never_shows_the_value() -> None:
    with pytest.raises(ConfigurationError, match="NOTAFLOW_ACCOUNT_KEYS"):
        SecretBox.from_setting("")
    with pytest.raises(ConfigurationError) as info:
        SecretBox.from_setting(f"{new_key()},not-a-key-segredo")
    assert "segredo" not in str(info.value)
