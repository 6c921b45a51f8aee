"""The container files, checked without a container engine: what they copy exists and builds
into a package with the commands they run, they run as the user the pods expect, and the
worker image has what a job needs."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from ckrv.services.operator import SERVICES
from ckrv.services.runners.kubernetes_objects import TMP_MOUNT_PATH, WORKSPACE_MOUNT_PATH
from ckrv.services.runners.settings import RunnerSettings
from tests.integration.deploy.conftest import DEPLOY, pod_specs, render

pytestmark = pytest.mark.integration

ROOT = DEPLOY.parent
IMAGES = DEPLOY / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The npm package that brings each agent's program.
AGENT_PACKAGES = {
    "claude": "@anthropic-ai/claude-code",
    "gemini": "@google/gemini-cli",
    "codex": "@openai/codex",
}

Instruction = tuple[str, str]


def instructions(containerfile: str) -> list[Instruction]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = ""
    for line in (IMAGES / containerfile).read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        joined += line[:-1] + " " if line.endswith("\\") else line + "\n"
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            found.append((keyword.upper(), " ".join(arguments.split())))
    return found


def final_stage(containerfile: str) -> list[Instruction]:
    every = instructions(containerfile)
    last_from = max(index for index, (keyword, _) in enumerate(every) if keyword == "FROM")
    return every[last_from:]


def exec_form(arguments: str) -> list[str]:
    words: list[str] = json.loads(arguments)
    return words


def copied_sources(containerfile: str) -> list[str]:
    """What the build copies from the repository (not from another stage)."""
    sources = []
    for keyword, arguments in instructions(containerfile):
        words = shlex.split(arguments)
        if keyword == "COPY" and not any(word.startswith("--from") for word in words):
            sources += words[:-1]
    return sources


def environment(containerfile: str) -> dict[str, str]:
    variables: dict[str, str] = {}
    for keyword, arguments in final_stage(containerfile):
        if keyword == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                variables[name] = value
    return variables


def pip_targets(containerfile: str) -> list[str]:
    """What each `pip install` installs, e.g. `.[server]`."""
    return [
        shlex.split(arguments.split("pip install", 1)[1])[-1]
        for keyword, arguments in instructions(containerfile)
        if keyword == "RUN" and "pip install" in arguments
    ]


def image_user(containerfile: str) -> int:
    (user,) = [arguments for keyword, arguments in final_stage(containerfile) if keyword == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    assert uid == gid
    return uid


@pytest.mark.parametrize("containerfile", ["services.Containerfile", "worker.Containerfile"])
def test_an_image_copies_only_what_exists_and_runs_as_a_fixed_non_root_user(
    containerfile: str,
) -> None:
    sources = copied_sources(containerfile)
    assert sources
    assert [source for source in sources if not (ROOT / source).exists()] == []
    assert image_user(containerfile) >= 1000


def test_pods_run_as_their_images_user() -> None:
    services_user = image_user("services.Containerfile")
    for overlay in ("dev", "prod"):
        for owner, spec in pod_specs(render(overlay)):
            if "/ckrv/services:" in spec["containers"][0]["image"]:
                assert spec["securityContext"]["runAsUser"] == services_user, owner
    assert RunnerSettings().kubernetes_run_as_user == image_user("worker.Containerfile")


def test_the_services_image_runs_one_service_by_name() -> None:
    stage = dict(final_stage("services.Containerfile"))
    assert exec_form(stage["ENTRYPOINT"]) == ["ckrv-cloud", "serve"]
    assert exec_form(stage["CMD"])[0] in SERVICES
    assert pip_targets("services.Containerfile") == [".[server]"]
    assert "server" in PYPROJECT["project"]["optional-dependencies"]


def test_the_worker_image_has_git_ssh_and_every_agent_with_a_writable_home() -> None:
    stage = final_stage("worker.Containerfile")
    assert exec_form(dict(stage)["ENTRYPOINT"]) == ["ckrv-worker"]
    # The worker imports only the base install's packages.
    assert pip_targets("worker.Containerfile") == ["."]
    runs = " ".join(arguments for keyword, arguments in stage if keyword == "RUN")
    apt_packages = runs.split("apt-get install -y --no-install-recommends", 1)[1].split("&&")[0]
    assert {"git", "openssh-client", "ca-certificates"} <= set(apt_packages.split())
    agents = yaml.safe_load((ROOT / "services" / "worker" / "agents.yaml").read_text())["agents"]
    programs = {agent["command"][0] for agent in agents.values() if agent["kind"] == "command"}
    assert programs == set(AGENT_PACKAGES)
    for package in AGENT_PACKAGES.values():
        assert f'"{package}@$' in runs
    # The root file system is read-only: home and temporary files are on the runner's volumes,
    # apart (Codex sets up no helper programs in a home inside the temporary folder).
    variables = environment("worker.Containerfile")
    assert variables["HOME"] == WORKSPACE_MOUNT_PATH
    assert variables["TMPDIR"] == TMP_MOUNT_PATH


def test_what_the_images_copy_builds_the_package_with_its_commands(tmp_path: Path) -> None:
    sources = copied_sources("services.Containerfile")
    assert copied_sources("worker.Containerfile") == sources
    tree = tmp_path / "src"
    tree.mkdir()
    for path in sources:
        if (ROOT / path).is_dir():
            ignored = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / path, tree / path, ignore=ignored)
        else:
            shutil.copy2(ROOT / path, tree / path)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip_wheel, "--quiet", "--wheel-dir", str(wheels), str(tree)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "ckrv-cloud = ckrv.services.operator:main" in scripts
    assert "ckrv-worker = ckrv.services.worker.main:main" in scripts
    assert {"ckrv/services/worker/agents.yaml", "ckrv/schemas/openapi.json"} <= names
