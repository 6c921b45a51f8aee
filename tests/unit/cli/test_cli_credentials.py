"""Token stores: the encrypted file (real files, real AES-GCM) and the system keyring (real keyring
library, with its own placeholder backends and an in-memory backend of ours)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import keyring
import keyring.backends.chainer
import keyring.backends.fail
import keyring.backends.null
import keyring.core
import pytest
from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import KeyringLocked, PasswordDeleteError

from ckrv.cli import credentials
from ckrv.cli.credentials import (
    KEYRING_SERVICE,
    CredentialStoreError,
    EncryptedFileStore,
    KeyringStore,
    StoredLogin,
    config_dir,
    open_credential_store,
    read_machine_id,
)
from ckrv.cli.errors import EXIT_USER_ERROR, ConfigError

FAIL = keyring.backends.fail.Keyring()  # type: ignore[no-untyped-call]
NULL = keyring.backends.null.Keyring()  # type: ignore[no-untyped-call]
MACHINE_ID = "0123456789abcdef0123456789abcdef"
OTHER_MACHINE_ID = "fedcba9876543210fedcba9876543210"


def a_login(n: int = 1, *, api_url: str = "https://api.ckrv.dev/v1") -> StoredLogin:
    return StoredLogin(
        api_url=api_url,
        access_token=f"eyJhbGciOiJSUzI1NiJ9.secret-access-{n}.signature",
        access_token_expires_at=datetime(2025, 3, 1, 10, 15, tzinfo=UTC) + timedelta(minutes=n),
        refresh_token=f"secret-refresh-{n}",
        email="ada@example.com",
    )


class MemoryKeyring(KeyringBackend):
    """A keyring backend that keeps its secrets in a dict, as a desktop keyring would on disk."""

    @properties.classproperty
    def priority(cls) -> float:  # noqa: N805 - a class property
        # Not viable, so keyring's own detection never chooses it: only a test installs it.
        raise RuntimeError("installed explicitly by the tests")

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.secrets.pop((service, username), None) is None:
            raise PasswordDeleteError("no such password")


class FixedChainer(keyring.backends.chainer.ChainerBackend):
    """keyring's chainer over the members given, never a candidate of keyring's own detection."""

    viable = False

    def __init__(self, *members: KeyringBackend) -> None:
        self.members = list(members)
        super().__init__()  # type: ignore[no-untyped-call]

    @property
    def backends(self) -> list[KeyringBackend]:
        return self.members


class LockedKeyring(MemoryKeyring):
    """A keyring whose collection stays locked, as when the user dismisses the unlock dialog."""

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("Failed to unlock the collection!")


@pytest.fixture
def machine_id(tmp_path: Path) -> Path:
    path = tmp_path / "machine-id"
    path.write_text(MACHINE_ID + "\n")
    return path


@pytest.fixture
def store(tmp_path: Path, machine_id: Path) -> EncryptedFileStore:
    return EncryptedFileStore(tmp_path / "config" / "ckrv", machine_id_paths=(machine_id,))


@pytest.fixture
def system_keyring() -> Iterator[None]:
    """Tests set the process's keyring with `keyring.set_keyring`; keyring's own choice after."""
    yield
    keyring.core.init_backend()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# The encrypted file


def test_a_login_survives_the_round_trip(store: EncryptedFileStore) -> None:
    assert store.load("default") is None
    store.save("default", a_login())
    assert store.load("default") == a_login()
    store.save("default", a_login(2))
    assert store.load("default") == a_login(2)


def test_the_file_is_private_to_the_user(store: EncryptedFileStore) -> None:
    os.umask(0o022)
    store.save("default", a_login())
    assert mode(store.path("default")) == 0o600
    assert mode(store.directory) == 0o700


def test_a_folder_open_to_others_is_closed_on_save(store: EncryptedFileStore) -> None:
    store.directory.mkdir(parents=True)
    store.directory.chmod(0o755)
    store.save("default", a_login())
    assert mode(store.directory) == 0o700


def test_the_file_holds_no_token_in_clear(store: EncryptedFileStore) -> None:
    login = a_login()
    store.save("default", login)
    data = store.path("default").read_bytes()
    for secret in (login.access_token, login.refresh_token, "secret-", login.email or "", "api."):
        assert secret.encode() not in data
    assert data.startswith(b"CKRVCRED")


def test_every_file_has_a_salt_and_nonce_of_its_own(store: EncryptedFileStore) -> None:
    store.save("default", a_login())
    first = store.path("default").read_bytes()
    store.save("other", a_login())
    second = store.path("other").read_bytes()
    store.save("default", a_login())
    third = store.path("default").read_bytes()
    salts = {data[10:26] for data in (first, second, third)}
    nonces = {data[26:38] for data in (first, second, third)}
    assert len(salts) == len(nonces) == 3
    assert len({first[38:], second[38:], third[38:]}) == 3


@pytest.mark.parametrize("offset", [0, 9, 12, 30, 60, -1])
def test_a_modified_file_is_refused_clearly(store: EncryptedFileStore, offset: int) -> None:
    store.save("default", a_login())
    path = store.path("default")
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CredentialStoreError) as raised:
        store.load("default")
    error = raised.value
    assert error.exit_code == EXIT_USER_ERROR
    assert f"the credentials of profile 'default' in {path} cannot be read" in error.message
    assert error.hint == "Run `ckrv cloud login` to replace them."


def test_a_file_that_is_not_ours_is_refused_clearly(store: EncryptedFileStore) -> None:
    store.directory.mkdir(parents=True)
    store.path("default").write_text('{"access_token": "abc"}')
    with pytest.raises(CredentialStoreError, match="it is not a ckrv credentials file"):
        store.load("default")


def test_a_file_moved_to_another_profile_does_not_open(store: EncryptedFileStore) -> None:
    store.save("work", a_login())
    store.path("work").rename(store.path("default"))
    with pytest.raises(CredentialStoreError, match="for another profile"):
        store.load("default")


def test_a_file_from_another_machine_does_not_open(tmp_path: Path, machine_id: Path) -> None:
    directory = tmp_path / "ckrv"
    EncryptedFileStore(directory, machine_id_paths=(machine_id,)).save("default", a_login())
    machine_id.write_text(OTHER_MACHINE_ID)
    with pytest.raises(CredentialStoreError, match="written on another machine"):
        EncryptedFileStore(directory, machine_id_paths=(machine_id,)).load("default")


def test_a_save_replaces_the_file_in_one_step(store: EncryptedFileStore) -> None:
    store.save("default", a_login(1))
    path = store.path("default")
    before = path.read_bytes()
    with path.open("rb") as reader:  # a reader that opened the file before the save
        store.save("default", a_login(2))
        assert reader.read() == before  # still the whole old file: a new one took its name
    assert store.load("default") == a_login(2)
    assert sorted(p.name for p in store.directory.iterdir()) == ["credentials-default.enc"]


def test_a_failed_save_leaves_the_old_login_and_no_debris(
    store: EncryptedFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save("default", a_login(1))

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CredentialStoreError, match="No space left on device"):
        store.save("default", a_login(2))
    monkeypatch.undo()
    assert store.load("default") == a_login(1)
    assert sorted(p.name for p in store.directory.iterdir()) == ["credentials-default.enc"]


def test_delete_removes_only_that_profile(store: EncryptedFileStore) -> None:
    store.save("default", a_login(1))
    store.save("work", a_login(2))
    assert store.delete("default") is True
    assert store.delete("default") is False
    assert store.load("default") is None
    assert store.load("work") == a_login(2)


@pytest.mark.parametrize("profile", ["../default", "a/b", ".hidden", "", "x" * 65, "two words"])
def test_a_profile_name_cannot_leave_the_folder(store: EncryptedFileStore, profile: str) -> None:
    with pytest.raises(ConfigError, match="is not a profile name"):
        store.save(profile, a_login())
    assert not store.directory.exists()


def test_the_machine_id_comes_from_systemd_else_dbus(tmp_path: Path) -> None:
    systemd, dbus = tmp_path / "etc-machine-id", tmp_path / "dbus-machine-id"
    dbus.write_text(OTHER_MACHINE_ID.upper() + "\n")
    assert read_machine_id((systemd, dbus)) == OTHER_MACHINE_ID.encode()
    for not_an_id in ("", "uninitialized\n", "1234"):
        systemd.write_text(not_an_id)
        assert read_machine_id((systemd, dbus)) == OTHER_MACHINE_ID.encode()
    systemd.write_text(MACHINE_ID)
    assert read_machine_id((systemd, dbus)) == MACHINE_ID.encode()
    assert read_machine_id((tmp_path / "none",)) is None


def test_without_a_machine_id_a_private_key_file_of_the_user_is_used(tmp_path: Path) -> None:
    directory = tmp_path / "ckrv"
    no_machine_id = (tmp_path / "no-machine-id",)
    store = EncryptedFileStore(directory, machine_id_paths=no_machine_id)
    store.save("default", a_login())
    key_file = directory / "store.key"
    assert len(key_file.read_bytes()) == 32
    assert mode(key_file) == 0o600
    again = EncryptedFileStore(directory, machine_id_paths=no_machine_id)
    assert again.load("default") == a_login()
    key_file.unlink()
    with pytest.raises(CredentialStoreError, match="the key it was written with is not"):
        again.load("default")


def test_the_folder_follows_xdg_config_home(tmp_path: Path) -> None:
    assert config_dir({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "ckrv"
    assert config_dir({"XDG_CONFIG_HOME": "relative"}) == Path.home() / ".config" / "ckrv"
    assert config_dir({}) == Path.home() / ".config" / "ckrv"


# The system keyring


@pytest.mark.usefixtures("system_keyring")
@pytest.mark.parametrize(
    "backend",
    [
        FAIL,
        NULL,
        keyring.backends.chainer.ChainerBackend(),  # type: ignore[no-untyped-call]
    ],
    ids=["fail", "null", "empty-chainer"],
)
def test_without_a_usable_keyring_the_file_is_used(backend: KeyringBackend, tmp_path: Path) -> None:
    keyring.set_keyring(backend)
    store = open_credential_store({"XDG_CONFIG_HOME": str(tmp_path)})
    assert isinstance(store, EncryptedFileStore)
    assert store.directory == tmp_path / "ckrv"


@pytest.mark.usefixtures("system_keyring")
def test_a_usable_keyring_is_used_and_holds_the_login(tmp_path: Path) -> None:
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    store = open_credential_store({"XDG_CONFIG_HOME": str(tmp_path)})
    assert isinstance(store, KeyringStore)
    assert store.name == "keyring"
    store.save("default", a_login())
    assert StoredLogin.from_json(backend.secrets[(KEYRING_SERVICE, "default")]) == a_login()
    assert store.load("default") == a_login()
    assert store.load("work") is None
    assert store.delete("default") is True
    assert store.delete("default") is False
    assert backend.secrets == {}
    assert not (tmp_path / "ckrv").exists()


@pytest.mark.usefixtures("system_keyring")
def test_the_variable_chooses_the_store(tmp_path: Path) -> None:
    keyring.set_keyring(MemoryKeyring())
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert isinstance(
        open_credential_store(env | {"CKRV_CREDENTIAL_STORE": "file"}), EncryptedFileStore
    )
    assert isinstance(
        open_credential_store(env | {"CKRV_CREDENTIAL_STORE": "keyring"}), KeyringStore
    )
    keyring.set_keyring(FAIL)
    with pytest.raises(ConfigError, match="CKRV_CREDENTIAL_STORE=keyring, but this system has no"):
        open_credential_store(env | {"CKRV_CREDENTIAL_STORE": "keyring"})
    with pytest.raises(ConfigError, match="CKRV_CREDENTIAL_STORE must be 'file' or 'keyring'"):
        open_credential_store(env | {"CKRV_CREDENTIAL_STORE": "vault"})


@pytest.mark.usefixtures("system_keyring")
def test_a_chainer_is_usable_when_one_member_is(tmp_path: Path) -> None:
    memory = MemoryKeyring()
    chainer = FixedChainer(FAIL, NULL, memory)
    assert credentials.usable_backends(chainer) == [memory]
    keyring.set_keyring(chainer)
    assert isinstance(open_credential_store({"XDG_CONFIG_HOME": str(tmp_path)}), KeyringStore)
    keyring.set_keyring(FixedChainer(FAIL, NULL))
    assert isinstance(open_credential_store({"XDG_CONFIG_HOME": str(tmp_path)}), EncryptedFileStore)


def test_a_keyring_that_fails_gives_a_clear_error(tmp_path: Path) -> None:
    store = KeyringStore(LockedKeyring(), tmp_path, interactive=False)
    with pytest.raises(CredentialStoreError) as raised:
        store.load("default")
    assert "cannot read credentials in the system keyring" in raised.value.message
    assert "Failed to unlock the collection!" in raised.value.message
    assert raised.value.hint is not None
    assert "CKRV_CREDENTIAL_STORE=file" in raised.value.hint


def test_an_unreadable_keyring_entry_gives_a_clear_error(tmp_path: Path) -> None:
    backend = MemoryKeyring()
    backend.set_password(KEYRING_SERVICE, "default", "not json")
    with pytest.raises(CredentialStoreError, match="in the system keyring cannot be read"):
        KeyringStore(backend, tmp_path).load("default")
