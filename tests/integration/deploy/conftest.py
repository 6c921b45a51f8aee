"""The objects each overlay renders to (`kubectl kustomize`), and helpers to read them."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ckrv.services.stack.process import find_executable

DEPLOY = Path(__file__).parents[3] / "deploy"
OVERLAYS = ("dev", "prod")
CONTROL_PLANE = "ckrv-system"
JOBS = "ckrv-jobs"

Manifest = dict[str, Any]


def kubectl(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(find_executable("kubectl")), *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@functools.cache
def render(overlay: str) -> tuple[Manifest, ...]:
    """Every object of the overlay, as the operator's `kubectl apply -k` would send it."""
    rendered = kubectl("kustomize", str(DEPLOY / "kustomize" / "overlays" / overlay))
    assert rendered.returncode == 0, rendered.stderr
    return tuple(document for document in yaml.safe_load_all(rendered.stdout) if document)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def manifests(overlay: str) -> tuple[Manifest, ...]:
    return render(overlay)


def of_kind(manifests: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


def named(manifests: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    """The one object of that kind whose name is `name` (or, for generated ones, starts so)."""
    found = [
        manifest
        for manifest in of_kind(manifests, kind)
        if manifest["metadata"]["name"] == name
        or manifest["metadata"]["name"].rsplit("-", 1)[0] == name
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def pod_specs(manifests: tuple[Manifest, ...]) -> Iterator[tuple[str, Manifest]]:
    """Every pod template, under its owner's `Kind/name`."""
    for manifest in manifests:
        spec = manifest.get("spec", {})
        if manifest["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            yield f"{manifest['kind']}/{manifest['metadata']['name']}", spec["template"]["spec"]


def containers(pod_spec: Manifest) -> list[Manifest]:
    every: list[Manifest] = pod_spec.get("initContainers", []) + pod_spec["containers"]
    return every
