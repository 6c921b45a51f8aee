"""Errors the `ckrv` command reports to the user, each with the exit code it ends with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXIT_OK = 0
EXIT_USER_ERROR = 1
EXIT_SYSTEM_ERROR = 2
EXIT_INTERRUPTED = 130
# 128 + SIGPIPE, as a shell reports a command whose output pipe closed.
EXIT_BROKEN_PIPE = 141


class CliError(Exception):
    """A failure explained to the user: a stable `code`, a message and an optional hint."""

    exit_code: int = EXIT_USER_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: str = "error",
        hint: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(CliError):
    """Bad input on the command line or in a file it names (exit 1)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, code="usage_error", hint=hint)


class ConfigError(CliError):
    """A missing or malformed setting such as CKRV_API_URL, or no credentials at all (exit 1)."""

    def __init__(
        self, message: str, *, code: str = "config_error", hint: str | None = None
    ) -> None:
        super().__init__(message, code=code, hint=hint)


class SessionEndedError(CliError):
    """The service no longer accepts the stored login's refresh token (exit 1)."""

    def __init__(self, login_command: str) -> None:
        super().__init__(f"your session has ended; run `{login_command}`", code="session_ended")


class CloudError(CliError):
    """The service refused a request, answered with a server error, or could not be reached.

    `code` is the service's error code (`not_found`, `quota_exceeded`, …) or one of the
    client's own: `unreachable`, `timeout`, `bad_response`, `http_<status>`. `extra` holds
    the other fields of the error body. A 4xx answer is the user's to fix (exit 1);
    anything else — a 5xx, no answer, an answer that is not the contract — exits 2.
    """

    def __init__(
        self,
        code: str,
        message: str,
        extra: Mapping[str, Any] | None = None,
        http_status: int | None = None,
        *,
        hint: str | None = None,
    ) -> None:
        client_fault = http_status is not None and 400 <= http_status < 500
        super().__init__(
            message,
            code=code,
            hint=hint,
            exit_code=EXIT_USER_ERROR if client_fault else EXIT_SYSTEM_ERROR,
        )
        self.extra: dict[str, Any] = dict(extra or {})
        self.http_status = http_status

    def __repr__(self) -> str:
        return f"CloudError({self.code!r}, {self.message!r}, {self.extra!r}, {self.http_status!r})"
