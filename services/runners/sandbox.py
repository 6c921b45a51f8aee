"""Bubblewrap around a local workload: system read-only, a private /tmp, its own folder writable.

The workload sees the system folders, the Python installation and Chakravarti's
code read-only, its input files read-only, its workspace writable, and nothing
else of the runner's folder (other workloads' secrets live there). It gets its
own process, IPC and host-name namespaces and no capabilities, but shares the
network: the worker clones from and uploads to servers that may be on loopback.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

SYSTEM_PATHS = tuple(
    Path(path) for path in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/opt")
)
# The parts of the `ckrv` namespace (see setup.py): an editable install keeps them outside
# the Python installation, in the source tree, whose other files the workload must not see.
CKRV_PARTS = ("cli", "events", "schemas", "services")
_PROBE_TIMEOUT_SECONDS = 10.0
SANDBOX_TMP = "/tmp"  # noqa: S108 - a private, empty tmpfs in each sandbox

_ISOLATION = (
    "--die-with-parent",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--cap-drop",
    "ALL",
)


def find_bubblewrap() -> Path | None:
    """`bwrap` if it is installed and can make a sandbox here (user namespaces may be off)."""
    found = shutil.which("bwrap")
    if found is None:
        return None
    probe = subprocess.run(
        [found, *_ISOLATION, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"],
        capture_output=True,
        timeout=_PROBE_TIMEOUT_SECONDS,
        check=False,
    )
    return Path(found) if probe.returncode == 0 else None


def default_read_only_paths() -> list[Path]:
    """The system, and where the interpreter, its packages and Chakravarti's code live."""
    paths = [*SYSTEM_PATHS, Path(sys.prefix), Path(sys.base_prefix)]
    for part in CKRV_PARTS:
        spec = importlib.util.find_spec(f"ckrv.{part}")
        if spec is not None and spec.submodule_search_locations:
            paths.extend(Path(location) for location in spec.submodule_search_locations)
    return paths


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(path.absolute() for path in paths))


def _show(paths: Iterable[Path]) -> list[str]:
    argv: list[str] = []
    for path in paths:
        if path.is_symlink():
            argv += ["--symlink", str(path.readlink()), str(path)]
        elif path.exists():
            argv += ["--ro-bind", str(path), str(path)]
    return argv


def bubblewrap_argv(
    bwrap: Path,
    command: Sequence[str],
    *,
    read_only: Iterable[Path],
    hidden: Path,
    workspace: Path,
    input_dir: Path,
) -> list[str]:
    """The command line that runs `command` in a sandbox.

    `read_only` are shown as they are (a symbolic link such as /bin -> usr/bin stays
    one); `hidden` (the runner's folder) is covered by an empty one, in which only
    `workspace` (writable) and `input_dir` (read-only) appear.
    """
    shown = _unique(read_only)
    # Mounts stack in order: what lies under /tmp goes on top of the private /tmp.
    in_tmp = [path for path in shown if path.is_relative_to(SANDBOX_TMP)]
    argv = [str(bwrap), *_ISOLATION, *_show([path for path in shown if path not in in_tmp])]
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", SANDBOX_TMP, *_show(in_tmp)]
    argv += ["--tmpfs", str(hidden)]
    argv += ["--bind", str(workspace), str(workspace), "--ro-bind", str(input_dir), str(input_dir)]
    argv += ["--chdir", str(workspace), "--", *command]
    return argv
