"""The bubblewrap command line: what a sandboxed workload sees, in which order it is mounted."""

from __future__ import annotations

import sys
from pathlib import Path

from ckrv.services.runners.sandbox import bubblewrap_argv, default_read_only_paths


def options(argv: list[str], option: str) -> list[tuple[str, ...]]:
    """Each occurrence of `option` with the arguments it takes."""
    width = {"--ro-bind": 2, "--bind": 2, "--symlink": 2, "--tmpfs": 1}[option]
    return [
        tuple(argv[index + 1 : index + 1 + width])
        for index, word in enumerate(argv)
        if word == option
    ]


def test_the_command_runs_in_its_workspace_with_only_its_own_parts_of_the_runner_folder(
    tmp_path: Path,
) -> None:
    system, missing, link = tmp_path / "system", tmp_path / "missing", tmp_path / "link"
    system.mkdir()
    link.symlink_to("system")
    root = tmp_path / "runner"
    workspace, inputs = root / "w" / "workspace", root / "w" / "input"

    argv = bubblewrap_argv(
        Path("/usr/bin/bwrap"),
        ["ckrv-worker", "run", "--", "--tmpfs"],
        read_only=[system, missing, link, system],
        hidden=root,
        workspace=workspace,
        input_dir=inputs,
    )

    assert argv[0] == "/usr/bin/bwrap"
    separator = argv.index("--")
    assert argv[separator + 1 :] == ["ckrv-worker", "run", "--", "--tmpfs"]
    sandbox = argv[:separator]
    assert options(sandbox, "--ro-bind") == [(str(system),) * 2, (str(inputs),) * 2]
    assert options(sandbox, "--symlink") == [("system", str(link))]
    assert options(sandbox, "--bind") == [(str(workspace),) * 2]
    assert options(sandbox, "--tmpfs") == [("/tmp",), (str(root),)]
    # The runner's folder is covered after the read-only folders that may contain it, and
    # the workload's own parts are mounted into the cover.
    assert sandbox.index(str(root)) > sandbox.index(str(system))
    assert sandbox.index(str(root)) < sandbox.index(str(workspace)) < sandbox.index(str(inputs))
    assert sandbox[sandbox.index("--chdir") + 1] == str(workspace)
    assert {"--unshare-pid", "--die-with-parent"} <= set(sandbox)
    assert "--unshare-net" not in sandbox  # loopback servers stay reachable


def test_workloads_may_read_the_system_and_the_python_installation() -> None:
    paths = default_read_only_paths()
    assert {Path("/usr"), Path("/etc"), Path(sys.prefix), Path(sys.base_prefix)} <= set(paths)
    services = Path(__file__).resolve().parents[3] / "services"
    assert services in paths  # Chakravarti's own code, even from a source checkout
