"""Signing in: `ckrv cloud login` (device authorization in the browser), `logout`, `whoami`."""

from __future__ import annotations

import os
import sys
import webbrowser
from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, TextIO

import cyclopts
from cyclopts import Parameter

from ckrv.cli.client import CloudClient, login_from_tokens
from ckrv.cli.commands.credentials import credentials
from ckrv.cli.config import Settings, token_from_environment
from ckrv.cli.credentials import (
    CredentialStore,
    CredentialStoreError,
    StoredLogin,
    open_credential_store,
)
from ckrv.cli.device_flow import wait_for_tokens
from ckrv.cli.errors import CloudError
from ckrv.cli.models import DeviceAuthorization, User
from ckrv.cli.options import DEFAULT_OPTIONS, CommonOptions
from ckrv.cli.output import Output, Spinner
from ckrv.cli.profiles import DEFAULT_PROFILE
from ckrv.cli.render import format_time

cloud = cyclopts.App(
    name="cloud",
    help="Log in to Chakravarti Cloud, log out, see who you are logged in as, "
    "and manage the git credentials jobs clone with.",
)
cloud.command(credentials)


@cloud.command
def login(
    *,
    no_browser: Annotated[bool, Parameter(name="--no-browser", negative="")] = False,
    options: CommonOptions = DEFAULT_OPTIONS,
) -> None:
    """Log in through your browser: shows a code to approve there, then stores the tokens.

    Logs in to CKRV_API_URL, else to the API the profile logged in to before, else to
    the local stack. The tokens are kept per profile (`--profile`) in the system keyring,
    or in an encrypted file under ~/.config/ckrv/ where there is no keyring.

    Parameters
    ----------
    no_browser
        Do not open a browser; open the printed address yourself, on any device.
    """
    out = options.output()
    settings = Settings.from_env(profile=options.profile)
    store = open_credential_store()
    settings = settings.aimed_at(_earlier_login(store, settings.profile, out))
    # Under --json, stdout is for the result alone; the instructions go to stderr.
    say = out.stderr if out.json else out.stdout
    with CloudClient(settings, None, log=out.debug) as client:
        device = client.start_device_authorization()
        _show_code(device, say)
        if not no_browser and out.stdout.isatty() and can_open_browser(os.environ):
            _open_browser(device, say)
        spinner = Spinner(
            "Waiting for you to approve in the browser… (Ctrl-C to stop)",
            out.stderr,
            enabled=out.stderr.isatty(),
        )
        if not spinner.enabled and not out.quiet:
            print("Waiting for approval…", file=out.stderr, flush=True)
        try:
            tokens = wait_for_tokens(client, device, wait=spinner.wait, log=out.debug)
        finally:
            spinner.clear()
    login = login_from_tokens(settings.api_url, tokens)
    store.save(settings.profile, login)
    try:
        with CloudClient(settings, login.access_token, log=out.debug) as client:
            user = client.me()
    except CloudError as error:
        out.warn(f"logged in, but your account could not be read: {error.message}")
        out.result(f"Logged in to {settings.api_url}.")
        return
    store.save(settings.profile, login.with_email(user.email))
    if out.json:
        out.data(
            {
                "profile": settings.profile,
                "api_url": settings.api_url,
                "credential_store": store.name,
                "user": user.body,
            }
        )
    elif out.quiet:
        out.result(user.email)
    else:
        out.result(f"Logged in as {describe_user(user)}")
    environment_token = token_from_environment()
    if environment_token is not None:
        out.warn(
            f"{environment_token.source} is set, and commands use it instead of this login "
            "until you unset it"
        )


@cloud.command
def logout(*, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """Log out: ends the session at the service and removes the stored tokens."""
    out = options.output()
    settings = Settings.from_env(profile=options.profile)
    profile = settings.profile
    store = open_credential_store()
    try:
        login = store.load(profile)
    except CredentialStoreError as error:
        out.debug(error.message)
        out.warn(f"the stored credentials of profile '{profile}' cannot be read; removing them")
        login = None
    revoked = False
    if login is not None:
        try:
            with CloudClient(replace(settings, api_url=login.api_url), None) as client:
                client.revoke_refresh_token(login.refresh_token)
            revoked = True
        except CloudError as error:
            out.warn(
                f"could not end the session at {login.api_url} ({error.message}); "
                "it ends by itself when its refresh token expires"
            )
    removed = store.delete(profile)
    which = "" if profile == DEFAULT_PROFILE else f" (profile '{profile}')"
    if out.json:
        out.data({"profile": profile, "logged_out": removed, "revoked": revoked})
    elif not removed:
        out.result(f"Not logged in{which}; nothing to do.")
    elif not out.quiet:
        out.result(f"Logged out{which}.")
    environment_token = token_from_environment()
    if environment_token is not None and not out.json:
        out.info(f"{environment_token.source} is still set: commands keep using it.")


@cloud.command
def whoami(*, options: CommonOptions = DEFAULT_OPTIONS) -> None:
    """Show who you are logged in as, your plan and the jobs left this billing cycle."""
    out = options.output()
    with CloudClient.from_environment(profile=options.profile, log=out.debug) as client:
        user = client.me()
        token = client.token
        settings = client.settings
    if out.json:
        out.data(user.body)
        return
    if out.quiet:
        out.result(user.email)
        return
    out.result(f"Logged in as {describe_user(user)}")
    if user.billing_cycle_end is not None:
        out.info(f"Billing cycle ends {format_time(user.billing_cycle_end)}.")
    source = token.source if token is not None else "none"
    credentials = (
        f"profile '{settings.profile}'" if source == "login" else f"the API token in {source}"
    )
    out.info(f"Using {credentials} at {settings.api_url}.")


def describe_user(user: User) -> str:
    """`me@example.com (pro tier, 97 jobs left this cycle)`."""
    left = user.job_quota_remaining
    jobs = "job" if left == 1 else "jobs"
    return f"{user.email} ({user.subscription_tier} tier, {left} {jobs} left this cycle)"


def can_open_browser(env: Mapping[str, str], platform: str = sys.platform) -> bool:
    """Whether a browser could open where the user sees it (not on a server over ssh)."""
    if platform in ("darwin", "win32") or env.get("BROWSER"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _show_code(device: DeviceAuthorization, say: TextIO) -> None:
    lines = [
        "To log in, open this page in a browser:",
        "",
        f"    {device.verification_uri}",
        "",
        "and enter the code:",
        "",
        f"    {device.user_code}",
        "",
    ]
    if device.verification_uri_complete:
        lines += [f"Or open {device.verification_uri_complete}, which fills the code in.", ""]
    print("\n".join(lines), file=say, flush=True)


def _open_browser(device: DeviceAuthorization, say: TextIO) -> None:
    address = device.verification_uri_complete or device.verification_uri
    try:
        opened = webbrowser.open(address)
    except webbrowser.Error:
        opened = False
    if opened:
        print("Opened your browser there.", file=say, flush=True)


def _earlier_login(store: CredentialStore, profile: str, out: Output) -> StoredLogin | None:
    """The profile's login before this one, whose API a new login goes to by default."""
    try:
        return store.load(profile)
    except CredentialStoreError as error:
        out.debug(f"ignoring the earlier credentials: {error.message}")
        return None
