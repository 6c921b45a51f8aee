"""PostgreSQL access: async engines and sessions, and creation of the schema every service uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


def async_database_url(url: str) -> str:
    """Accept plain `postgresql://` URLs (as operators write them) and pick the asyncpg driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


# Connections older than this are replaced when next checked out (PostgreSQL and proxies
# may drop idle ones). A connection PostgreSQL dropped otherwise fails one statement, and
# SQLAlchemy then replaces every connection of the pool opened before it.
POOL_RECYCLE_SECONDS = 600


def create_engine(url: str, *, pool_size: int = 5, max_overflow: int = 10) -> AsyncEngine:
    # No pre-ping: it would cost a round trip on every checkout, several per request.
    return create_async_engine(
        async_database_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=POOL_RECYCLE_SECONDS,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def temporary_engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, pool_size=1)
    try:
        yield engine
    finally:
        await engine.dispose()


async def create_schema(url: str) -> None:
    """Create every table that does not exist yet; existing tables and rows are kept."""
    # Imported here: the table modules import this one for sessions.
    from ckrv.services.tables import METADATA

    async with temporary_engine(url) as engine, engine.begin() as connection:
        await connection.run_sync(METADATA.create_all)
