"""Choosing the runner backend named in the settings."""

from __future__ import annotations

from ckrv.events.catalog import RunnerBackend
from ckrv.services.runners.base import Runner, RunnerError
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.settings import RunnerSettings


def open_runner(settings: RunnerSettings) -> Runner:
    """The backend `settings.backend` names, ready to use; close it when done."""
    if settings.backend is RunnerBackend.LOCAL:
        return LocalRunner.from_settings(settings)
    raise RunnerError(f"the {settings.backend} runner backend is not available in this version")
