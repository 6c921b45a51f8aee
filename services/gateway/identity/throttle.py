"""Limits on failed attempts (wrong user codes, wrong passwords), shared by all gateway replicas.

The counts live in PostgreSQL (`failed_attempts`), not in a replica's memory: an
attacker spread over several replicas gets the budget of one, and a restart forgets
nothing. PostgreSQL rather than NATS KV because the activation page already works
in a database session for every request, and an upsert increments a count
atomically in one round trip, with no compare-and-swap retries.

Each key has a fixed window: the first failure opens it for `window_seconds`, the
failures within it are counted, and once it has run out the next failure opens a new
one. A key with `failures` failures in its open window is blocked until it closes.
Times are the database's clock, the one every replica shares. Keys are stored as
SHA-256 hashes: they hold typed emails and codes. Rows whose window ran out are
deleted as failures are written, skipping rows another replica is writing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, case, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import Field, SQLModel, col

# At most this many run-out rows are deleted per failure written: enough to keep
# up with the rows written, and a bounded cost for each.
PRUNE_BATCH = 100


class FailedAttempts(SQLModel, table=True):
    """The failures counted for one key (a throttle, a kind and a value) in its open window."""

    __tablename__ = "failed_attempts"

    key: str = Field(primary_key=True, max_length=100)
    failures: int
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), nullable=False, index=True)


@dataclass(frozen=True)
class Limit:
    failures: int
    window_seconds: float


@dataclass(frozen=True)
class Throttle:
    """Several limits checked together: blocked if any of the keys given is blocked."""

    name: str
    limits: dict[str, Limit]

    def _key(self, kind: str, value: str) -> str:
        return f"{self.name}.{kind}:{hashlib.sha256(value.encode()).hexdigest()}"

    async def retry_after(self, sessions: async_sessionmaker[AsyncSession], **keys: str) -> int:
        """Seconds until the keys given (kind=value) may try again; 0 if they may now."""
        limit_of = {self._key(kind, value): self.limits[kind] for kind, value in keys.items()}
        seconds_left = func.extract("epoch", col(FailedAttempts.expires_at) - func.now())
        async with sessions() as session:
            open_windows = await session.execute(
                select(col(FailedAttempts.key), col(FailedAttempts.failures), seconds_left).where(
                    col(FailedAttempts.key).in_(limit_of),
                    col(FailedAttempts.expires_at) > func.now(),
                )
            )
        return max(
            (
                max(1, math.ceil(left))
                for key, failures, left in open_windows
                if failures >= limit_of[key].failures
            ),
            default=0,
        )

    async def record_failure(self, sessions: async_sessionmaker[AsyncSession], **keys: str) -> None:
        # The keys are written in the order of `limits`, the same in every transaction,
        # so two replicas recording failures never wait for each other in a circle.
        async with sessions() as session, session.begin():
            for kind in self.limits:
                if kind in keys:
                    await _count_failure(session, self._key(kind, keys[kind]), self.limits[kind])
            await _prune(session)

    async def clear(
        self, sessions: async_sessionmaker[AsyncSession], kind: str, value: str
    ) -> None:
        """Forget the failures of one key (an email whose owner just signed in)."""
        async with sessions() as session, session.begin():
            await session.execute(
                delete(FailedAttempts).where(col(FailedAttempts.key) == self._key(kind, value))
            )


async def _count_failure(session: AsyncSession, key: str, limit: Limit) -> None:
    new_expiry = func.now() + timedelta(seconds=limit.window_seconds)
    run_out = col(FailedAttempts.expires_at) <= func.now()
    await session.execute(
        insert(FailedAttempts)
        .values(key=key, failures=1, expires_at=new_expiry)
        .on_conflict_do_update(
            index_elements=["key"],
            set_={
                "failures": case((run_out, 1), else_=col(FailedAttempts.failures) + 1),
                "expires_at": case((run_out, new_expiry), else_=col(FailedAttempts.expires_at)),
            },
        )
    )


async def _prune(session: AsyncSession) -> None:
    run_out = (
        select(col(FailedAttempts.key))
        .where(col(FailedAttempts.expires_at) <= func.now())
        .limit(PRUNE_BATCH)
        .with_for_update(skip_locked=True)
    )
    await session.execute(delete(FailedAttempts).where(col(FailedAttempts.key).in_(run_out)))


# Wrong user codes: 10 per client address and 5 per code tried, each in 15 minutes.
USER_CODES = Throttle(
    "user_code",
    {
        "address": Limit(failures=10, window_seconds=15 * 60),
        "code": Limit(failures=5, window_seconds=15 * 60),
    },
)
# Failed sign-ins: 20 per client address and 5 per email, each in 15 minutes.
SIGN_INS = Throttle(
    "sign_in",
    {
        "address": Limit(failures=20, window_seconds=15 * 60),
        "email": Limit(failures=5, window_seconds=15 * 60),
    },
)
