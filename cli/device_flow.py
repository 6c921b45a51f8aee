"""The waiting half of the OAuth 2.0 device authorization grant (RFC 8628 §3.4-3.5).

After `POST /auth/device` the CLI asks `POST /auth/token` every `interval` seconds
until the user approves or denies the request in the browser or the code
expires. `slow_down` means polling too fast: the interval grows by 5 seconds
for the rest of the flow. A failure to reach the service is tried again at the
next poll, a few times in a row at most.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ckrv.cli.client import CloudClient
from ckrv.cli.errors import CliError, CloudError
from ckrv.cli.models import DeviceAuthorization, TokenPair
from ckrv.cli.profiles import DEFAULT_PROFILE, login_command

DEFAULT_INTERVAL_SECONDS = 5.0
"""RFC 8628 §3.2: the interval when the service names none."""
SLOW_DOWN_SECONDS = 5.0
"""RFC 8628 §3.5: how much longer every later interval is after a `slow_down`."""
MAX_FAILED_POLLS = 3
"""Polls in a row that may fail to reach the service before the login gives up."""


class DeviceFlowError(CliError):
    """The login ended without tokens: denied, or the code expired (exit 1)."""


def denied() -> DeviceFlowError:
    return DeviceFlowError("the request was denied in the browser", code="access_denied")


def expired(profile: str = DEFAULT_PROFILE) -> DeviceFlowError:
    return DeviceFlowError(
        f"the code expired; run `{login_command(profile)}` again", code="expired_token"
    )


def wait_for_tokens(
    client: CloudClient,
    device: DeviceAuthorization,
    *,
    wait: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] | None = None,
) -> TokenPair:
    """Poll until the service issues tokens for `device`; `DeviceFlowError` if it will not.

    `wait(seconds)` passes the time between polls (a spinner's, on a terminal).
    """
    debug = log or (lambda _: None)
    interval = device.interval if device.interval and device.interval > 0 else None
    interval = interval or DEFAULT_INTERVAL_SECONDS
    deadline = clock() + device.expires_in
    failed_polls = 0
    profile = client.settings.profile
    while True:
        if clock() + interval > deadline:
            raise expired(profile)
        wait(interval)
        try:
            return client.exchange_device_code(device.device_code)
        except CloudError as error:
            if error.code == "authorization_pending":
                failed_polls = 0
            elif error.code == "slow_down":
                failed_polls = 0
                interval += SLOW_DOWN_SECONDS
                debug(f"asked to slow down: polling every {interval:g} s")
            elif error.code == "access_denied":
                raise denied() from None
            elif error.code == "expired_token":
                raise expired(profile) from None
            elif _is_transient(error) and failed_polls + 1 < MAX_FAILED_POLLS:
                failed_polls += 1
                debug(f"poll {failed_polls} in a row failed ({error.message}); trying again")
            else:
                raise


def _is_transient(error: CloudError) -> bool:
    """No answer, or a server error: the next poll may well succeed."""
    return error.code in ("unreachable", "timeout") or (error.http_status or 0) >= 500
