"""`keyring_would_prompt` against a real Secret Service: gnome-keyring on a private bus.

A keyring backend opens a dialog when the collection it uses is locked (to unlock it)
or missing (to create it with a new password); an unlocked one it uses in silence.
"""

from __future__ import annotations

from collections.abc import Iterator

import keyring.backends.SecretService
import pytest
from keyring.backend import KeyringBackend

from ckrv.cli.credentials import keyring_would_prompt
from tests.secret_service import SecretService, running_secret_service

SESSION_COLLECTION = "/org/freedesktop/secrets/collection/session"


def in_session(service: SecretService, monkeypatch: pytest.MonkeyPatch) -> SecretService:
    """`service`, made the session's keyring for this process."""
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", service.address)
    return service


@pytest.fixture
def login_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretService]:
    """The session's keyring, with a login collection unlocked at sign-in."""
    with running_secret_service("the desktop session password") as service:
        yield in_session(service, monkeypatch)


@pytest.fixture
def new_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretService]:
    """The session's keyring on a first sign-in without a password: no default collection."""
    with running_secret_service(None) as service:
        yield in_session(service, monkeypatch)


def secret_service_backend(preferred_collection: str | None = None) -> KeyringBackend:
    """keyring's Secret Service backend, on `preferred_collection` (as a user can configure it)."""
    backend = keyring.backends.SecretService.Keyring()  # type: ignore[no-untyped-call]
    if preferred_collection is None:
        return backend
    return backend.with_properties(preferred_collection=preferred_collection)


def test_an_unlocked_default_collection_needs_no_dialog(login_keyring: SecretService) -> None:
    assert not login_keyring.is_locked()
    assert keyring_would_prompt(secret_service_backend()) is False


def test_a_locked_default_collection_would_ask_to_be_unlocked(
    login_keyring: SecretService,
) -> None:
    login_keyring.lock()
    assert keyring_would_prompt(secret_service_backend()) is True


def test_a_missing_default_collection_would_ask_for_a_password(
    new_keyring: SecretService,
) -> None:
    assert keyring_would_prompt(secret_service_backend()) is True


def test_the_backends_preferred_collection_is_the_one_asked_about(
    login_keyring: SecretService,
) -> None:
    login_keyring.lock()  # the default collection only
    assert keyring_would_prompt(secret_service_backend(SESSION_COLLECTION)) is False
