"""Where the service is and who the user is: settings from the environment and the bearer token.

Settings are read when a command runs, never at import time. The bearer token
comes from the first provider that has one: an API token in CKRV_TOKEN (or
CHAKRAVARTI_TOKEN), used as it is; then the profile's stored login from
`ckrv cloud login`, whose access token is refreshed silently shortly before it
expires and once more if the service refuses it. Refresh tokens rotate, so each
refresh stores the new one, under a lock that keeps two `ckrv` processes from
spending the same refresh token (which the service takes for theft).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

from ckrv.cli.credentials import CredentialStore, StoredLogin
from ckrv.cli.errors import CloudError, ConfigError, SessionEndedError
from ckrv.cli.profiles import DEFAULT_PROFILE, PROFILE_VARIABLE, check_profile, login_command

# The first variable set wins; the CHAKRAVARTI_* names are those of the open-source client.
API_URL_VARIABLES = ("CKRV_API_URL", "CHAKRAVARTI_API_URL")
TOKEN_VARIABLES = ("CKRV_TOKEN", "CHAKRAVARTI_TOKEN")
API_URL_VARIABLE = API_URL_VARIABLES[0]
TOKEN_VARIABLE = TOKEN_VARIABLES[0]
TIMEOUT_VARIABLE = "CHAKRAVARTI_TIMEOUT"
CLIENT_ID_VARIABLE = "CHAKRAVARTI_CLIENT_ID"

# The local stack's gateway, as `ckrv-cloud up` starts it.
DEFAULT_API_URL = "http://127.0.0.1:8080/v1"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CLIENT_ID = "ckrv-cli"

REFRESH_MARGIN_SECONDS = 60.0
"""A stored access token this close to its expiry is refreshed before it is used."""


@dataclass(frozen=True)
class Settings:
    """How to reach Chakravarti Cloud."""

    api_url: str
    """Base URL of the API, ending in `/v1`, without a trailing slash."""
    timeout: float
    """Seconds to wait for each request."""
    client_id: str = DEFAULT_CLIENT_ID
    """The OAuth client id this CLI signs in as."""
    profile: str = DEFAULT_PROFILE
    """Whose stored credentials to use."""
    api_url_variable: str | None = None
    """The variable `api_url` came from; None when it is the default."""

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, profile: str | None = None
    ) -> Settings:
        """Read the environment (`profile`, from `--profile`, wins over CKRV_PROFILE).

        Raises `ConfigError` if a setting is malformed.
        """
        env = os.environ if env is None else env
        api_url_variable = next(
            (name for name in API_URL_VARIABLES if env.get(name, "").strip()), None
        )
        api_url = (
            _parse_api_url(api_url_variable, env[api_url_variable].strip())
            if api_url_variable
            else DEFAULT_API_URL
        )
        return cls(
            api_url=api_url,
            timeout=_parse_timeout(env.get(TIMEOUT_VARIABLE, "").strip()),
            client_id=env.get(CLIENT_ID_VARIABLE, "").strip() or DEFAULT_CLIENT_ID,
            profile=check_profile(
                profile or env.get(PROFILE_VARIABLE, "").strip() or DEFAULT_PROFILE
            ),
            api_url_variable=api_url_variable,
        )

    def aimed_at(self, login: StoredLogin | None) -> Settings:
        """The API of the profile's login, unless a variable names one; these settings if none."""
        if login is None or self.api_url_variable is not None:
            return self
        return replace(self, api_url=login.api_url)


def _parse_api_url(variable: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{variable} must be an http(s) URL such as {DEFAULT_API_URL}; got {value!r}"
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


# Bearer tokens


class BearerToken(Protocol):
    """What authenticates the requests of one command."""

    @property
    def source(self) -> str:
        """Where it came from, for messages: a variable's name, or `login`."""
        ...

    def value(self) -> str:
        """The token to send now."""
        ...

    def renew(self, rejected: str) -> str | None:
        """A new token after the service refused `rejected` (401); None if there is none."""
        ...


@dataclass(frozen=True)
class StaticToken:
    """A token used as it is, such as an API token from CKRV_TOKEN: nothing renews it."""

    token: str
    source: str

    def value(self) -> str:
        return self.token

    def renew(self, rejected: str) -> str | None:
        return None


Refresh = Callable[[Settings, StoredLogin], StoredLogin]
"""Trades a login's refresh token for new tokens at `settings.api_url`: the login with them.

Raises `SessionEndedError` when the service refuses the refresh token, `CloudError`
when it cannot be asked.
"""


class LoginToken:
    """The access token of a profile's stored login, refreshed when about to expire or refused."""

    source = "login"

    def __init__(
        self,
        settings: Settings,
        store: CredentialStore,
        login: StoredLogin,
        refresh: Refresh,
        *,
        clock: Callable[[], datetime] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self._login = login
        self._refresh_with = refresh
        self._clock = clock or (lambda: datetime.now(UTC))
        self._log = log or (lambda _: None)

    @property
    def login(self) -> StoredLogin:
        return self._login

    def value(self) -> str:
        if self._login.expires_within(REFRESH_MARGIN_SECONDS, self._clock()):
            self._refresh(replacing=self._login.access_token, rejected=False)
        return self._login.access_token

    def renew(self, rejected: str) -> str | None:
        self._refresh(replacing=rejected, rejected=True)
        return self._login.access_token

    def _refresh(self, *, replacing: str, rejected: bool) -> None:
        profile = self.settings.profile
        with self.store.locked(profile):
            current = self.store.load(profile)
            if current is None:  # `ckrv cloud logout` ran meanwhile
                raise SessionEndedError(login_command(profile))
            if current.access_token != replacing and not current.expires_within(
                REFRESH_MARGIN_SECONDS, self._clock()
            ):
                self._log("using the access token another ckrv refreshed meanwhile")
                self._login = current
                return
            try:
                fresh = self._refresh_with(self.settings, current)
            except SessionEndedError:
                self.store.delete(profile)
                raise
            except CloudError as error:
                still_valid = not current.expires_within(0, self._clock())
                if rejected or not still_valid or _is_refusal(error):
                    raise
                self._log(f"could not refresh the access token yet ({error.message}); using it")
                self._login = current
                return
            self.store.save(profile, fresh)
            self._login = fresh
            self._log(f"refreshed the access token of profile '{profile}'")


def _is_refusal(error: CloudError) -> bool:
    """An answer of the service refusing the request, not a failure to get one."""
    return error.http_status is not None and 400 <= error.http_status < 500


TokenProvider = Callable[[], BearerToken | None]
"""Returns the user's bearer token, or None when it has none to give."""


def token_from_environment(env: Mapping[str, str] | None = None) -> StaticToken | None:
    """The API token in CKRV_TOKEN, else CHAKRAVARTI_TOKEN, if set and not blank."""
    env = os.environ if env is None else env
    for variable in TOKEN_VARIABLES:
        token = env.get(variable, "").strip()
        if token:
            return StaticToken(token, variable)
    return None


class StoredLoginProvider:
    """The profile's stored login, if it has one for the API these settings aim at."""

    def __init__(
        self,
        settings: Settings,
        open_store: Callable[[], CredentialStore],
        refresh: Refresh,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._open_store = open_store
        self._refresh = refresh
        self._log = log

    def __call__(self) -> LoginToken | None:
        store = self._open_store()
        login = store.load(self.settings.profile)
        if login is None:
            return None
        settings = self.settings.aimed_at(login)
        if login.api_url != settings.api_url:
            raise ConfigError(
                f"profile '{settings.profile}' is logged in to {login.api_url}, "
                f"not to {settings.api_url} ({settings.api_url_variable})",
                code="not_authenticated",
                hint=f"Unset {settings.api_url_variable} to use that login, or run "
                f"`{login_command(settings.profile)}` to log in to {settings.api_url}.",
            )
        return LoginToken(settings, store, login, self._refresh, log=self._log)


def resolve_token(
    providers: Sequence[TokenProvider], profile: str = DEFAULT_PROFILE
) -> BearerToken:
    """The first token a provider has; `ConfigError` (exit 1) telling how to get one if none."""
    for provider in providers:
        token = provider()
        if token is not None:
            return token
    where = "" if profile == DEFAULT_PROFILE else f" (profile '{profile}')"
    raise ConfigError(
        f"not logged in{where}: run `{login_command(profile)}` or set {TOKEN_VARIABLE}",
        code="not_authenticated",
        hint=f"{TOKEN_VARIABLE} takes an API token, for scripts and CI.",
    )
