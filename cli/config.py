"""Where the service is and who the user is: settings from the environment and the token.

Settings are read when a command runs, never at import time. The bearer token
comes from the first token provider that has one; today that is the
CHAKRAVARTI_TOKEN variable, and `ckrv cloud login` will add a keyring provider
in front of it without the commands changing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ckrv.cli.errors import ConfigError

API_URL_VARIABLE = "CHAKRAVARTI_API_URL"
TIMEOUT_VARIABLE = "CHAKRAVARTI_TIMEOUT"
TOKEN_VARIABLE = "CHAKRAVARTI_TOKEN"  # noqa: S105 - the variable's name, not a token

# The local stack's gateway, as `ckrv-cloud up` starts it.
DEFAULT_API_URL = "http://127.0.0.1:8080/v1"
DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Settings:
    """How to reach Chakravarti Cloud."""

    api_url: str
    """Base URL of the API, ending in `/v1`, without a trailing slash."""
    timeout: float
    """Seconds to wait for each request."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read CHAKRAVARTI_API_URL and CHAKRAVARTI_TIMEOUT; raise `ConfigError` if malformed."""
        env = os.environ if env is None else env
        return cls(
            api_url=_parse_api_url(env.get(API_URL_VARIABLE, "").strip() or DEFAULT_API_URL),
            timeout=_parse_timeout(env.get(TIMEOUT_VARIABLE, "").strip()),
        )


def _parse_api_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{API_URL_VARIABLE} must be an http(s) URL such as {DEFAULT_API_URL}; got {value!r}"
        )
    return value.rstrip("/")


def _parse_timeout(value: str) -> float:
    if not value:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds; got {value!r}")
    return seconds


TokenProvider = Callable[[], str | None]
"""Returns the user's bearer token, or None when it has none to give."""


def token_from_environment(env: Mapping[str, str] | None = None) -> str | None:
    """The CHAKRAVARTI_TOKEN variable, if set and not blank."""
    env = os.environ if env is None else env
    return env.get(TOKEN_VARIABLE, "").strip() or None


DEFAULT_TOKEN_PROVIDERS: tuple[TokenProvider, ...] = (token_from_environment,)


def resolve_token(providers: Sequence[TokenProvider] = DEFAULT_TOKEN_PROVIDERS) -> str:
    """The first token a provider has; `ConfigError` (exit 1) telling how to get one if none."""
    for provider in providers:
        token = provider()
        if token:
            return token
    raise ConfigError(
        "not signed in to Chakravarti Cloud: no access token found",
        code="not_authenticated",
        hint=f"Set {TOKEN_VARIABLE} to your access token, or run `ckrv cloud login`.",
    )
