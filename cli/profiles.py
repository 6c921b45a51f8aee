"""Profiles: named sets of stored credentials, chosen with `--profile` or CKRV_PROFILE."""

from __future__ import annotations

import re

from ckrv.cli.errors import ConfigError

PROFILE_VARIABLE = "CKRV_PROFILE"
DEFAULT_PROFILE = "default"

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_profile(name: str) -> str:
    """`name` if it can name a profile (letters, digits, `_.-`; up to 64); `ConfigError` if not."""
    if not _PROFILE_NAME.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a profile name: use letters, digits, '_', '.' and '-' "
            "(up to 64, starting with a letter or digit)"
        )
    return name


def login_command(profile: str) -> str:
    """The command that logs `profile` in, as the user would type it."""
    if profile == DEFAULT_PROFILE:
        return "ckrv cloud login"
    return f"ckrv --profile {profile} cloud login"
