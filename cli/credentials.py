"""Where `ckrv cloud login` keeps a profile's tokens: the system keyring, or an encrypted file.

The keyring is used when it has a backend that can store secrets (not keyring's
`fail` or `null` placeholders); otherwise each profile's login is a file
`$XDG_CONFIG_HOME/ckrv/credentials-<profile>.enc` (default `~/.config/ckrv/`),
mode 0600 in a 0700 folder. `CKRV_CREDENTIAL_STORE=file|keyring` overrides the
detection.

The file is AES-256-GCM encrypted under a key derived with HKDF-SHA256 from the
machine id (`/etc/machine-id`, else `/var/lib/dbus/machine-id`) and a random
salt of its own; the profile name is authenticated with it, so a file renamed to
another profile does not open either. A machine without a machine id (macOS,
Windows, some containers) uses a random per-user key kept in `store.key` beside
the files (mode 0600) instead. The machine id is readable by every local user, so
the encryption keeps the tokens out of backups, file syncs and copies to other
machines; against other local users the file's mode is what protects them.

The keyring never prompts in a non-interactive run (stdin not a terminal): a
locked Secret Service collection, which would open an unlock dialog, is reported
as an error instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ckrv.cli.errors import CliError, ConfigError
from ckrv.cli.profiles import check_profile, login_command

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

T = TypeVar("T")

STORE_VARIABLE = "CKRV_CREDENTIAL_STORE"
STORE_CHOICES = ("file", "keyring")
KEYRING_SERVICE = "ckrv-cloud"
MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


class CredentialStoreError(CliError):
    """Stored credentials that cannot be read or written (exit 1)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, code="credential_store_error", hint=hint)


@dataclass(frozen=True)
class StoredLogin:
    """What a login leaves behind for one profile."""

    api_url: str
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    email: str | None = None

    def expires_within(self, seconds: float, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return self.access_token_expires_at - now <= timedelta(seconds=seconds)

    def with_email(self, email: str | None) -> StoredLogin:
        return replace(self, email=email)

    def to_json(self) -> str:
        record: dict[str, Any] = asdict(self)
        record["access_token_expires_at"] = self.access_token_expires_at.isoformat()
        return json.dumps({"version": 1, **record}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredLogin:
        """The login `to_json` wrote; `ValueError` if `text` is not one."""
        record = json.loads(text)
        if not isinstance(record, dict) or record.get("version") != 1:
            raise ValueError("not a version 1 login record")
        try:
            expires_at = datetime.fromisoformat(record["access_token_expires_at"])
            login = cls(
                api_url=record["api_url"],
                access_token=record["access_token"],
                access_token_expires_at=expires_at,
                refresh_token=record["refresh_token"],
                email=record.get("email"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"a login record without {error}") from error
        if expires_at.tzinfo is None:
            raise ValueError("the expiry has no time zone")
        for value in (login.api_url, login.access_token, login.refresh_token):
            if not isinstance(value, str) or not value:
                raise ValueError("a login record with an empty or non-text field")
        if login.email is not None and not isinstance(login.email, str):
            raise ValueError("a login record whose email is not text")
        return login


class CredentialStore(Protocol):
    """Logins by profile name."""

    name: str
    """`keyring` or `file`, for messages."""

    def load(self, profile: str) -> StoredLogin | None: ...

    def save(self, profile: str, login: StoredLogin) -> None: ...

    def delete(self, profile: str) -> bool:
        """Remove the profile's login; whether there was one."""
        ...

    def locked(self, profile: str) -> contextlib.AbstractContextManager[None]:
        """Hold the profile against other `ckrv` processes (while a token refreshes)."""
        ...


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/ckrv`, or `~/.config/ckrv` when the variable is unset or relative."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "ckrv"


def _private_dir(path: Path) -> Path:
    """`path`, created if needed, readable by its owner only."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if sys.platform != "win32" and path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError as error:
        raise CredentialStoreError(
            f"cannot create the folder for credentials {path}: {error.strerror or error}"
        ) from error
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (POSIX `flock`; no lock where there is none)."""
    _private_dir(path.parent)
    if sys.platform == "win32":  # pragma: no cover - no flock; refreshes are rare enough
        yield
        return
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step: a reader sees the old bytes or the new, whole."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if sys.platform != "win32":
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


# The encrypted file


MAGIC = b"CKRVCRED"
FORMAT_VERSION = 1
KEY_FROM_MACHINE_ID = 1
KEY_FROM_USER_KEY_FILE = 2
SALT_BYTES = 16
NONCE_BYTES = 12
HEADER_BYTES = len(MAGIC) + 2 + SALT_BYTES + NONCE_BYTES
HKDF_INFO = b"ckrv credential store v1"
USER_KEY_FILE = "store.key"
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")


def read_machine_id(paths: tuple[Path, ...] = MACHINE_ID_PATHS) -> bytes | None:
    """This machine's id (systemd/D-Bus), or None where there is none."""
    for path in paths:
        try:
            text = path.read_text(encoding="ascii").strip().lower()
        except (OSError, UnicodeDecodeError):
            continue
        # An empty or "uninitialized" file (some container images) is no id.
        if _MACHINE_ID.fullmatch(text):
            return text.encode()
    return None


class EncryptedFileStore:
    """Each profile's login in its own AES-GCM encrypted file under `directory`."""

    name = "file"

    def __init__(
        self, directory: Path, *, machine_id_paths: tuple[Path, ...] = MACHINE_ID_PATHS
    ) -> None:
        self.directory = directory
        self._machine_id_paths = machine_id_paths

    def path(self, profile: str) -> Path:
        return self.directory / f"credentials-{check_profile(profile)}.enc"

    def load(self, profile: str) -> StoredLogin | None:
        path = self.path(profile)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CredentialStoreError(
                f"cannot read the credentials of profile '{profile}' at {path}: "
                f"{error.strerror or error}"
            ) from error
        return self._decrypt(profile, path, data)

    def save(self, profile: str, login: StoredLogin) -> None:
        path = self.path(profile)
        _private_dir(self.directory)
        try:
            _atomic_write(path, self._encrypt(profile, login))
        except OSError as error:
            raise CredentialStoreError(
                f"cannot write the credentials of profile '{profile}' to {path}: "
                f"{error.strerror or error}"
            ) from error

    def delete(self, profile: str) -> bool:
        try:
            self.path(profile).unlink()
        except FileNotFoundError:
            return False
        except OSError as error:
            raise CredentialStoreError(
                f"cannot remove {self.path(profile)}: {error.strerror or error}"
            ) from error
        return True

    @contextlib.contextmanager
    def locked(self, profile: str) -> Iterator[None]:
        with _file_lock(self.directory / f".credentials-{check_profile(profile)}.lock"):
            yield

    # Encryption

    def _encrypt(self, profile: str, login: StoredLogin) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        source, secret = self._key_material()
        salt = secrets.token_bytes(SALT_BYTES)
        nonce = secrets.token_bytes(NONCE_BYTES)
        header = MAGIC + bytes([FORMAT_VERSION, source]) + salt + nonce
        key = _derive_key(secret, salt)
        sealed = AESGCM(key).encrypt(nonce, login.to_json().encode(), header + profile.encode())
        return header + sealed

    def _decrypt(self, profile: str, path: Path, data: bytes) -> StoredLogin:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        unreadable = (
            f"the credentials of profile '{profile}' in {path} cannot be read: "
            "{problem}; log in again"
        )
        hint = f"Run `{login_command(profile)}` to replace them."
        if len(data) <= HEADER_BYTES or not data.startswith(MAGIC):
            raise CredentialStoreError(
                unreadable.format(problem="it is not a ckrv credentials file"), hint=hint
            )
        version, source = data[len(MAGIC)], data[len(MAGIC) + 1]
        if version != FORMAT_VERSION or source not in (KEY_FROM_MACHINE_ID, KEY_FROM_USER_KEY_FILE):
            raise CredentialStoreError(
                unreadable.format(problem=f"format {version}.{source} is unknown to this ckrv"),
                hint=hint,
            )
        salt_at = len(MAGIC) + 2
        salt = data[salt_at : salt_at + SALT_BYTES]
        nonce = data[salt_at + SALT_BYTES : HEADER_BYTES]
        secret = self._key_secret(source)
        if secret is None:
            raise CredentialStoreError(
                unreadable.format(
                    problem="the key it was written with is not on this machine any more"
                ),
                hint=hint,
            )
        try:
            plain = AESGCM(_derive_key(secret, salt)).decrypt(
                nonce, data[HEADER_BYTES:], data[:HEADER_BYTES] + profile.encode()
            )
        except InvalidTag:
            raise CredentialStoreError(
                unreadable.format(
                    problem="it was modified, or written on another machine or for another profile"
                ),
                hint=hint,
            ) from None
        try:
            return StoredLogin.from_json(plain)
        except ValueError as error:
            raise CredentialStoreError(unreadable.format(problem=str(error)), hint=hint) from None

    def _key_material(self) -> tuple[int, bytes]:
        machine_id = read_machine_id(self._machine_id_paths)
        if machine_id is not None:
            return KEY_FROM_MACHINE_ID, machine_id
        return KEY_FROM_USER_KEY_FILE, self._make_user_key()

    def _key_secret(self, source: int) -> bytes | None:
        if source == KEY_FROM_MACHINE_ID:
            return read_machine_id(self._machine_id_paths)
        try:
            return _valid_user_key((self.directory / USER_KEY_FILE).read_bytes())
        except FileNotFoundError:
            return None

    def _make_user_key(self) -> bytes:
        """The per-user key of machines without a machine id, made on first use."""
        existing = self._key_secret(KEY_FROM_USER_KEY_FILE)
        if existing is not None:
            return existing
        path = self.directory / USER_KEY_FILE
        _private_dir(self.directory)
        key = secrets.token_bytes(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another ckrv made it a moment ago: use theirs.
            return _valid_user_key(path.read_bytes())
        with os.fdopen(fd, "wb") as file:
            file.write(key)
            file.flush()
            os.fsync(file.fileno())
        return key


def _valid_user_key(data: bytes) -> bytes:
    if len(data) != 32:
        raise CredentialStoreError(
            f"the credentials key file is damaged ({len(data)} bytes, not 32)",
            hint="Delete it and log in again with `ckrv cloud login`.",
        )
    return data


def _derive_key(secret: bytes, salt: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=HKDF_INFO).derive(secret)


# The system keyring


def usable_backends(backend: KeyringBackend) -> list[KeyringBackend]:
    """The backends of `backend` (itself, or a chainer's members) that can store secrets."""
    from keyring.backends import chainer, fail, null

    members = backend.backends if isinstance(backend, chainer.ChainerBackend) else [backend]
    return [b for b in members if not isinstance(b, (fail.Keyring, null.Keyring))]


def _is_interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _secret_service_would_prompt(backend: KeyringBackend) -> bool:
    """Whether using a Secret Service backend opens an unlock or create dialog."""
    try:
        import secretstorage
        from secretstorage.exceptions import ItemNotFoundException, SecretStorageException
    except ImportError:  # pragma: no cover - keyring's Secret Service backend needs it
        return False
    try:
        connection = secretstorage.dbus_init()
    except SecretStorageException:
        return False  # no D-Bus: the backend fails by itself, without a dialog
    with contextlib.closing(connection):
        path = getattr(backend, "preferred_collection", None)
        try:
            collection = (
                secretstorage.Collection(connection, path)
                if path
                else secretstorage.Collection(connection)
            )
            return collection.is_locked()
        except ItemNotFoundException:
            return True  # the backend would create the collection, asking for a password
        except SecretStorageException:
            return False


def keyring_would_prompt(backend: KeyringBackend) -> bool:
    """Whether using `backend` now could show the user a dialog (a locked keyring)."""
    from keyring.backends import SecretService

    return any(
        isinstance(member, SecretService.Keyring) and _secret_service_would_prompt(member)
        for member in usable_backends(backend)
    )


class KeyringStore:
    """Each profile's login as one secret of the system keyring (service `ckrv-cloud`)."""

    name = "keyring"

    def __init__(
        self, backend: KeyringBackend, lock_directory: Path, *, interactive: bool | None = None
    ) -> None:
        self.backend = backend
        self._lock_directory = lock_directory
        self._interactive = _is_interactive() if interactive is None else interactive

    def load(self, profile: str) -> StoredLogin | None:
        check_profile(profile)
        text = self._call("read", lambda: self.backend.get_password(KEYRING_SERVICE, profile))
        if text is None:
            return None
        try:
            return StoredLogin.from_json(text)
        except ValueError as error:
            raise CredentialStoreError(
                f"the credentials of profile '{profile}' in the system keyring cannot be read: "
                f"{error}; log in again",
                hint=f"Run `{login_command(profile)}` to replace them.",
            ) from None

    def save(self, profile: str, login: StoredLogin) -> None:
        check_profile(profile)
        self._call(
            "write",
            lambda: self.backend.set_password(KEYRING_SERVICE, profile, login.to_json()),
        )

    def delete(self, profile: str) -> bool:
        from keyring.errors import PasswordDeleteError

        check_profile(profile)

        def delete() -> bool:
            try:
                self.backend.delete_password(KEYRING_SERVICE, profile)
            except PasswordDeleteError:  # backends say "no such password" this way
                return False
            return True

        return self._call("delete", delete)

    @contextlib.contextmanager
    def locked(self, profile: str) -> Iterator[None]:
        with _file_lock(self._lock_directory / f".keyring-{check_profile(profile)}.lock"):
            yield

    def check_unlocked(self) -> None:
        """`CredentialStoreError` if, without a terminal, using the keyring would open a dialog."""
        if not self._interactive and keyring_would_prompt(self.backend):
            raise CredentialStoreError(
                "the system keyring is locked, and ckrv does not ask to unlock it when it runs "
                "without a terminal",
                hint=(
                    "Unlock the keyring (log in to the desktop session), set CKRV_TOKEN to an API "
                    f"token, or use {STORE_VARIABLE}=file and log in again."
                ),
            )

    def _call(self, action: str, operation: Callable[[], T]) -> T:
        # Checked again at every use: the keyring may lock while a login waits for approval.
        self.check_unlocked()
        try:
            return operation()
        except Exception as error:  # backends fail in their own ways (D-Bus, OS, ...)
            raise CredentialStoreError(
                f"cannot {action} credentials in the system keyring ({self.backend.name}): "
                f"{error or type(error).__name__}",
                hint=f"Set {STORE_VARIABLE}=file to keep them in an encrypted file instead.",
            ) from error


def open_credential_store(env: Mapping[str, str] | None = None) -> CredentialStore:
    """The store this run uses: the one `CKRV_CREDENTIAL_STORE` names, else keyring if usable.

    `CredentialStoreError` if that is a keyring which, without a terminal, would ask to be unlocked.
    """
    env = os.environ if env is None else env
    choice = env.get(STORE_VARIABLE, "").strip().lower()
    if choice not in ("", "auto", *STORE_CHOICES):
        raise ConfigError(
            f"{STORE_VARIABLE} must be 'file' or 'keyring' (or unset to choose automatically); "
            f"got {env[STORE_VARIABLE]!r}"
        )
    directory = config_dir(env)
    if choice == "file":
        return EncryptedFileStore(directory)
    import keyring

    backend = keyring.get_keyring()
    if usable_backends(backend):
        store = KeyringStore(backend, directory)
        # Refused here, before any command starts: `ckrv cloud login` would otherwise have the
        # user approve in the browser, then find it cannot keep the tokens.
        store.check_unlocked()
        return store
    if choice == "keyring":
        raise ConfigError(
            f"{STORE_VARIABLE}=keyring, but this system has no usable keyring "
            f"(keyring found {backend.name})",
            hint=f"Unset {STORE_VARIABLE} to keep credentials in an encrypted file.",
        )
    return EncryptedFileStore(directory)
