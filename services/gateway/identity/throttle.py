"""Sliding-window limits on failed attempts (wrong user codes, wrong passwords).

The windows live in this process's memory: with several gateway replicas each
enforces its own limits, so an attacker spread over N replicas gets N times the
budget, and a restart forgets. That is acceptable while the gateway runs as one
process (the embedded stack); behind a load balancer the counts belong in a shared
store (PostgreSQL or NATS KV) keyed the same way.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

# Beyond this many keys a sweep drops the windows that have no recent failure left.
SWEEP_THRESHOLD = 10_000


@dataclass(frozen=True)
class Limit:
    failures: int
    window_seconds: float


@dataclass
class FailureWindows:
    """Counts failures per key; a key with `limit.failures` failures in the window is blocked."""

    limit: Limit
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        failures = self._failures.get(key)
        if failures is None:
            return None
        while failures and failures[0] <= now - self.limit.window_seconds:
            failures.popleft()
        if not failures:
            del self._failures[key]
            return None
        return failures

    def retry_after(self, key: str) -> int:
        """Seconds until `key` may try again; 0 if it may now."""
        now = self.clock()
        failures = self._recent(key, now)
        if failures is None or len(failures) < self.limit.failures:
            return 0
        # Free again when the oldest failure that keeps the count at the limit leaves the window.
        oldest_counted = failures[len(failures) - self.limit.failures]
        return max(1, math.ceil(oldest_counted + self.limit.window_seconds - now))

    def record_failure(self, key: str) -> None:
        now = self.clock()
        if len(self._failures) >= SWEEP_THRESHOLD:
            for stale in list(self._failures):
                self._recent(stale, now)
        failures = self._failures.setdefault(key, deque())
        failures.append(now)
        # More than the limit need not be remembered: the newest ones decide.
        while len(failures) > self.limit.failures:
            failures.popleft()

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


@dataclass
class Throttle:
    """Several windows checked together: blocked if any of the keys given is blocked."""

    windows: dict[str, FailureWindows]

    def retry_after(self, **keys: str) -> int:
        return max(self.windows[kind].retry_after(key) for kind, key in keys.items())

    def record_failure(self, **keys: str) -> None:
        for kind, key in keys.items():
            self.windows[kind].record_failure(key)


def user_code_throttle() -> Throttle:
    """Wrong user codes: 10 per client address and 5 per code tried, each in 15 minutes."""
    return Throttle(
        {
            "address": FailureWindows(Limit(failures=10, window_seconds=15 * 60)),
            "code": FailureWindows(Limit(failures=5, window_seconds=15 * 60)),
        }
    )


def sign_in_throttle() -> Throttle:
    """Failed sign-ins: 20 per client address and 5 per email, each in 15 minutes."""
    return Throttle(
        {
            "address": FailureWindows(Limit(failures=20, window_seconds=15 * 60)),
            "email": FailureWindows(Limit(failures=5, window_seconds=15 * 60)),
        }
    )
