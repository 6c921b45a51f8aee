"""Core statements compiled once and run straight on asyncpg, for a request's hot path.

SQLAlchemy's work around each execution (cache keys, parameter and result
processing, session state, the greenlet hop) costs several times what asyncpg
needs for the statement itself: on the path every job submission takes it was
most of the gateway's CPU. A `DriverStatement` keeps SQLAlchemy for writing the
statement and asyncpg for running it; `driver_transaction` gives a pooled
connection of the engine inside one asyncpg transaction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import JSON
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


class DriverStatement:
    """A statement as asyncpg's SQL (`$1`, `$2`, …) and the order its parameters go in."""

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        # A list parameter (`in_([...])`) is expanded at each execution; asyncpg gets none.
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("a driver statement cannot have expanding (list) parameters")
        self._compiled = compiled
        self.sql = str(self._compiled)
        self._names: tuple[str, ...] = tuple(self._compiled.positiontup or ())
        # JSON columns take text on asyncpg's side; SQLAlchemy would serialize them the same.
        self._json = frozenset(
            name for name, bind in self._compiled.binds.items() if isinstance(bind.type, JSON)
        )

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        """Positional arguments; parameters not given take the statement's own values."""
        values = self._compiled.construct_params(dict(parameters))
        assert values is not None
        return [
            json.dumps(values[name])
            if name in self._json and values[name] is not None
            else values[name]
            for name in self._names
        ]

    async def fetchrow(
        self, connection: asyncpg.Connection, parameters: Mapping[str, Any]
    ) -> asyncpg.Record | None:
        return await connection.fetchrow(self.sql, *self.arguments(parameters))

    async def fetchval(self, connection: asyncpg.Connection, parameters: Mapping[str, Any]) -> Any:
        return await connection.fetchval(self.sql, *self.arguments(parameters))

    async def execute(self, connection: asyncpg.Connection, parameters: Mapping[str, Any]) -> None:
        await connection.execute(self.sql, *self.arguments(parameters))


@asynccontextmanager
async def driver_transaction(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A connection from the engine's pool, in a transaction committed on success."""
    async with engine.connect() as pooled:
        raw = await pooled.get_raw_connection()
        connection: asyncpg.Connection = raw.driver_connection
        # SQLAlchemy does not see this transaction; it ends before the connection goes back.
        async with connection.transaction():
            yield connection
