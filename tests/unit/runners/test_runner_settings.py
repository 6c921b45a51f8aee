"""Runner settings from the environment, and the backend they choose."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckrv.events.catalog import RunnerBackend
from ckrv.services.runners.backends import open_runner
from ckrv.services.runners.base import RunnerError
from ckrv.services.runners.local import LocalRunner
from ckrv.services.runners.settings import RunnerSettings, SandboxMode


def test_the_local_runner_is_built_from_ckrv_runner_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKRV_RUNNER_ROOT", str(tmp_path / "workloads"))
    monkeypatch.setenv("CKRV_RUNNER_SANDBOX", "off")
    monkeypatch.setenv("CKRV_RUNNER_POLL_INTERVAL_SECONDS", "0.2")
    settings = RunnerSettings()
    assert (settings.backend, settings.sandbox) == (RunnerBackend.LOCAL, SandboxMode.OFF)

    runner = open_runner(settings)
    assert isinstance(runner, LocalRunner)
    assert runner.root == tmp_path / "workloads"
    assert runner.root.is_dir()
    assert not runner.sandboxed
    assert runner.poll_interval_seconds == 0.2


def test_the_kubernetes_backend_outside_a_cluster_asks_for_a_kubeconfig() -> None:
    with pytest.raises(RunnerError, match="CKRV_RUNNER_KUBERNETES_KUBECONFIG"):
        open_runner(RunnerSettings(backend=RunnerBackend.KUBERNETES))


def test_a_required_sandbox_without_bubblewrap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "setsid").symlink_to("/usr/bin/setsid")
    monkeypatch.setenv("PATH", str(tools))
    with pytest.raises(RunnerError, match="bubblewrap"):
        LocalRunner(tmp_path / "runner", sandbox=SandboxMode.REQUIRED)
    assert not LocalRunner(tmp_path / "runner", sandbox=SandboxMode.AUTO).sandboxed
