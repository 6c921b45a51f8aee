"""A Secret Service of the tests' own: gnome-keyring on a private D-Bus session bus.

`ckrv` run with `SecretService.environment()` finds this bus and a home folder of
its own, so the keyring of whoever runs the tests is never touched. The bus
activates nothing: only `gnome-keyring-daemon --components=secrets` is on it, and
an unlock dialog it is asked for has no prompter to show it, so it is dismissed.
`dbus-monitor` records what callers ask of the bus meanwhile (`SecretService.recording`).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import secretstorage
from jeepney.bus_messages import message_bus  # type: ignore[import-untyped]
from jeepney.io.blocking import DBusConnection, open_dbus_connection  # type: ignore[import-untyped]
from jeepney.wrappers import DBusAddress, new_method_call  # type: ignore[import-untyped]

PROGRAMS = ("dbus-daemon", "dbus-monitor", "gnome-keyring-daemon")
SECRETS_NAME = "org.freedesktop.secrets"
DEFAULT_COLLECTION = "/org/freedesktop/secrets/aliases/default"
LOGIN_COLLECTION = "/org/freedesktop/secrets/collection/login"
STARTUP_SECONDS = 10.0
# The policy of Debian's session bus (everything allowed, for the one user who can reach it), but
# no <servicedir>: nothing is activated (no other gnome-keyring, no GUI prompter).
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={socket_dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def missing_programs() -> list[str]:
    return [program for program in PROGRAMS if shutil.which(program) is None]


@dataclass(frozen=True)
class BusCall:
    """A method call as `dbus-monitor --profile` shows it."""

    sender: str
    destination: str
    path: str
    interface: str
    member: str

    @classmethod
    def of(cls, fields: list[str]) -> BusCall | None:
        """The call on a line of `dbus-monitor --profile` (its tab-separated fields), if any."""
        # mc, timestamp, serial, sender, destination, path, interface, member
        if len(fields) != 8 or fields[0] != "mc":
            return None
        return cls(*fields[3:])


@dataclass
class BusRecording:
    """The method calls made on the bus while the recording ran."""

    calls: list[BusCall] = field(default_factory=list)

    def to(self, destination: str) -> list[BusCall]:
        return [call for call in self.calls if call.destination == destination]

    def of(self, interface: str, member: str) -> list[BusCall]:
        return [call for call in self.calls if (call.interface, call.member) == (interface, member)]


class SecretService:
    """A dbus-daemon and a gnome-keyring-daemon under `root`; `start()`, then `stop()`.

    With a `password`, the keyring holds a login collection, the default one, created
    and unlocked with that password as a desktop session's login would; without,
    it has no default collection.
    """

    def __init__(self, root: Path, password: str | None) -> None:
        self.root = root
        self.home = root / "home"
        self.runtime_dir = root / "runtime"
        self.password = password
        self.address = ""
        self._processes: list[subprocess.Popen[bytes]] = []

    def environment(self) -> dict[str, str]:
        """What a program needs to be a user of this keyring, and of no other."""
        return {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
            "XDG_CACHE_HOME": str(self.home / ".cache"),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "DBUS_SESSION_BUS_ADDRESS": self.address,
        }

    def start(self) -> None:
        for folder in (self.home, self.runtime_dir):
            folder.mkdir(mode=0o700, parents=True)
        config = self.root / "bus.conf"
        config.write_text(BUS_CONFIG.format(socket_dir=self.root))
        bus = self._spawn(
            ["dbus-daemon", "--nofork", f"--config-file={config}", "--print-address=1"],
            stdout=subprocess.PIPE,
        )
        assert bus.stdout is not None
        self.address = bus.stdout.readline().decode().strip()
        assert self.address, "dbus-daemon printed no address"
        # `--unlock` creates the login keyring with the password on stdin, or unlocks it.
        unlock = ["--unlock"] if self.password is not None else []
        keyring = self._spawn(
            [
                "gnome-keyring-daemon", "--foreground", "--components=secrets",
                f"--control-directory={self.runtime_dir / 'keyring'}", *unlock,
            ],
            stdin=subprocess.PIPE,
        )  # fmt: skip
        assert keyring.stdin is not None
        if self.password is not None:
            keyring.stdin.write(self.password.encode())
        keyring.stdin.close()
        self._wait_until_ready()

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()
        self._processes.clear()

    @contextlib.contextmanager
    def connection(self) -> Iterator[DBusConnection]:
        """A connection to the bus, as secretstorage takes it."""
        connection = open_dbus_connection(self.address)
        try:
            yield connection
        finally:
            connection.close()

    def lock(self) -> None:
        """Lock the default collection, as the desktop does when the screen locks."""
        with self.connection() as connection:
            collection = secretstorage.Collection(connection, DEFAULT_COLLECTION)
            collection.lock()
            assert collection.is_locked()

    def is_locked(self) -> bool:
        with self.connection() as connection:
            return secretstorage.Collection(connection, DEFAULT_COLLECTION).is_locked()

    def secrets(self, attributes: dict[str, str]) -> list[str]:
        """The secrets of the (unlocked) default collection whose attributes include these."""
        with self.connection() as connection:
            collection = secretstorage.Collection(connection, DEFAULT_COLLECTION)
            return [item.get_secret().decode() for item in collection.search_items(attributes)]

    def files(self) -> dict[str, bytes]:
        """Every file under the home folder (the keyring's and ckrv's), by relative path."""
        return {
            str(path.relative_to(self.home)): path.read_bytes()
            for path in sorted(self.home.rglob("*"))
            if path.is_file()
        }

    @contextlib.contextmanager
    def recording(self) -> Iterator[BusRecording]:
        """Record the method calls made on the bus until the block ends."""
        monitor = subprocess.Popen(
            ["dbus-monitor", "--address", self.address, "--profile"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert monitor.stdout is not None
        output = _MonitorOutput(monitor.stdout.fileno())
        recording = BusRecording()
        try:
            # The bus takes the monitor's name away once it has become a monitor: from then
            # on it sees every message.
            output.read_until(lambda fields: fields[-1] == "NameLost")
            yield recording
            marker = self._marker_call()
            recorded = output.read_until(lambda fields: BusCall.of(fields) == marker)
        finally:
            monitor.terminate()
            monitor.wait()
            monitor.stdout.close()
        recording.calls = [call for fields in recorded if (call := BusCall.of(fields))]

    def _marker_call(self) -> BusCall:
        """Ping the bus: the monitor shows this call after every message sent before it."""
        peer = DBusAddress(
            "/org/freedesktop/DBus",
            bus_name="org.freedesktop.DBus",
            interface="org.freedesktop.DBus.Peer",
        )
        with self.connection() as connection:
            connection.send_and_get_reply(new_method_call(peer, "Ping"), timeout=STARTUP_SECONDS)
            return BusCall(
                connection.unique_name, peer.bus_name, peer.object_path, peer.interface, "Ping"
            )

    def _spawn(
        self, argv: list[str], *, stdin: int | None = None, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        with open(self.root / f"{argv[0]}.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                stderr=log,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.environment()},
            )
        self._processes.append(process)
        return process

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        with self.connection() as connection:
            while time.monotonic() < deadline:
                for process in self._processes:
                    if process.poll() is not None:
                        raise RuntimeError(self._failure(f"{process.args!r} exited"))
                (owned,) = connection.send_and_get_reply(
                    message_bus.NameHasOwner(SECRETS_NAME)
                ).body
                if owned and (self.password is None or self._has_login_collection(connection)):
                    return
                time.sleep(0.02)
        raise RuntimeError(self._failure(f"no {SECRETS_NAME} on the bus after {STARTUP_SECONDS}s"))

    @staticmethod
    def _has_login_collection(connection: DBusConnection) -> bool:
        return any(
            collection.collection_path == LOGIN_COLLECTION
            for collection in secretstorage.get_all_collections(connection)
        )

    def _failure(self, what: str) -> str:
        logs = "".join(
            f"\n{log.name}:\n{log.read_text(errors='replace')}" for log in self.root.glob("*.log")
        )
        return f"the Secret Service did not start: {what}{logs}"


class _MonitorOutput:
    """The lines `dbus-monitor --profile` writes, read as they come, split into fields."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pending = b""

    def read_until(self, found: Callable[[list[str]], bool]) -> list[list[str]]:
        """The lines up to and including the first that is `found`; error after a while."""
        lines: list[list[str]] = []
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            while b"\n" in self._pending:
                line, self._pending = self._pending.split(b"\n", 1)
                fields = line.decode(errors="replace").split("\t")
                lines.append(fields)
                if found(fields):
                    return lines
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self._fd], [], [], max(left, 0))
            chunk = os.read(self._fd, 65536) if readable else b""
            if not chunk:
                raise AssertionError(
                    "dbus-monitor did not show what was awaited; it showed:\n"
                    + "\n".join("\t".join(fields) for fields in lines)
                )
            self._pending += chunk


@contextlib.contextmanager
def running_secret_service(password: str | None) -> Iterator[SecretService]:
    """A started `SecretService` in a fresh folder, stopped and removed after.

    A missing program fails the test, it does not skip it: `just system-packages` installs them.
    """
    if missing := missing_programs():
        pytest.fail(
            f"{', '.join(missing)} not installed: run `just system-packages` "
            "(apt-get install gnome-keyring dbus-daemon dbus-bin)"
        )
    # Not under pytest's tmp_path: the bus's socket path must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="ckrv-keyring-"))
    service = SecretService(root, password)
    try:
        service.start()
        yield service
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)
