"""Choosing the runner backend named in the settings."""

from __future__ import annotations

from ckrv.events.catalog import RunnerBackend
from ckrv.services.runners.base import Runner
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.settings import RunnerSettings


def open_runner(settings: RunnerSettings) -> Runner:
    """The backend `settings.backend` names, ready to use; close it when done."""
    if settings.backend is RunnerBackend.KUBERNETES:
        # Imported here: the Kubernetes client takes a while to load, and only this backend
        # needs it.
        from ckrv.services.runners.kubernetes import KubernetesRunner

        return KubernetesRunner.from_settings(settings)
    return LocalRunner.from_settings(settings)
