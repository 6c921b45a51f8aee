"""The key ring that seals git credentials: its text format, sealing, and where it comes from."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from ckrv.services.common.sealing import KeyRing, KeyRingError, UnsealError, generate_key_entry
from ckrv.services.common.settings import CommonSettings
from ckrv.services.stack.state import CREDENTIAL_KEYS_FILE, development_credential_keys

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
BOUND_TO = b"user-1/deploy"


def test_a_value_opens_with_what_it_was_bound_to_only() -> None:
    keys = KeyRing.parse(f"k1:{KEY}")

    sealed = keys.seal(b"ghp_secret", BOUND_TO)

    assert sealed.key_id == "k1"
    assert b"ghp_secret" not in sealed.ciphertext
    assert keys.open(sealed, BOUND_TO) == b"ghp_secret"
    with pytest.raises(UnsealError, match="belongs elsewhere"):
        keys.open(sealed, b"user-2/deploy")


def test_sealing_twice_gives_different_ciphertexts() -> None:
    keys = KeyRing.parse(f"k1:{KEY}")
    assert keys.seal(b"same", BOUND_TO).ciphertext != keys.seal(b"same", BOUND_TO).ciphertext


def test_the_first_key_seals_and_every_key_opens() -> None:
    old = KeyRing.parse(f"old:{KEY}")
    rotated = KeyRing.parse(f" new:{OTHER_KEY} , old:{KEY} ")
    sealed_before = old.seal(b"before", BOUND_TO)

    sealed_after = rotated.seal(b"after", BOUND_TO)

    assert (rotated.sealing_key_id, sealed_after.key_id) == ("new", "new")
    assert rotated.open(sealed_before, BOUND_TO) == b"before"
    assert rotated.open(sealed_after, BOUND_TO) == b"after"
    with pytest.raises(UnsealError, match="'new', which is not in the key ring"):
        old.open(sealed_after, BOUND_TO)


def test_a_key_ring_shows_its_key_ids_only() -> None:
    keys = KeyRing.parse(f"k1:{KEY},k2:{OTHER_KEY}")
    assert repr(keys) == "KeyRing(key_ids=['k1', 'k2'])"
    assert keys.key_ids == ("k1", "k2")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "entry 1 is not `kid:base64key`"),
        (KEY, "entry 1 is not `kid:base64key`"),
        (f"k1:{KEY},", "entry 2 is not `kid:base64key`"),
        (f"k1:{KEY[:-2]}!!", "key 'k1' is not valid base64"),
        (f"k1:{base64.b64encode(bytes(31)).decode()}", "key 'k1' must be 16, 24 or 32 bytes"),
        (f":{KEY}", "key id '' must be"),
        (f"my key:{KEY}", "key id 'my key' must be"),
        (f"{'k' * 51}:{KEY}", "must be 1-50 letters"),
        (f"k1:{KEY},k1:{OTHER_KEY}", "key id 'k1' appears twice"),
    ],
)
def test_a_malformed_key_ring_is_refused_without_showing_a_key(text: str, problem: str) -> None:
    with pytest.raises(KeyRingError) as refused:
        KeyRing.parse(text)
    assert problem in str(refused.value)
    assert KEY[:-2] not in str(refused.value)


def test_new_key_entries_are_random_256_bit_keys() -> None:
    first, second = generate_key_entry("k1"), generate_key_entry("k1")
    assert first != second
    assert KeyRing.parse(first).key_ids == ("k1",)
    assert len(base64.b64decode(first.partition(":")[2])) == 32


def test_settings_name_a_malformed_key_ring_and_do_not_echo_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CKRV_ENV", "dev")
    monkeypatch.setenv("CKRV_CREDENTIAL_KEYS", f"k1:{KEY[:20]}")
    with pytest.raises(ValidationError) as refused:
        CommonSettings()
    assert "CKRV_CREDENTIAL_KEYS: key 'k1' must be 16, 24 or 32 bytes" in str(refused.value)
    assert KEY[:20] not in str(refused.value)


def test_settings_give_the_configured_key_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKRV_CREDENTIAL_KEYS", f"k2:{OTHER_KEY},k1:{KEY}")
    monkeypatch.setenv("CKRV_ENV", "dev")
    settings = CommonSettings()
    assert settings.credential_key_ring().key_ids == ("k2", "k1")
    assert OTHER_KEY not in repr(settings)


def test_development_allows_the_well_known_key_ring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKRV_ENV", "dev")
    monkeypatch.delenv("CKRV_CREDENTIAL_KEYS", raising=False)
    assert CommonSettings().credential_key_ring().key_ids == ("dev",)


def test_the_local_stack_keeps_one_generated_key_ring_private(tmp_path: Path) -> None:
    first = development_credential_keys(tmp_path)

    assert KeyRing.parse(first).key_ids == ("local",)
    assert stat.S_IMODE((tmp_path / CREDENTIAL_KEYS_FILE).stat().st_mode) == 0o600
    assert development_credential_keys(tmp_path) == first
    (tmp_path / "other").mkdir()
    assert development_credential_keys(tmp_path / "other") != first
