"""`kubectl apply` takes each overlay's objects, as it would on a cluster: here the kmock
Kubernetes emulator, serving the API discovery of a real cluster's built-in resources."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import kmock
import pytest
import yaml

from ckrv.services.stack.process import find_executable
from tests.integration.deploy.conftest import Manifest

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[kmock.KubernetesEmulator, Path]]:
    """The emulator, and a kubeconfig that points kubectl at it."""
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        # The discovery documents kmock ships, taken from a real cluster.
        bundled = resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        discovery = gzip.decompress(bundled)
        emulator.resources.load_data(discovery)
        # kmock 0.8 names the core group's version "/v1" in its own answer, which kubectl
        # cannot map: the core group's document is served as it is instead.
        core = next(doc for doc in json.loads(discovery) if doc["groupVersion"] == "v1")
        emulator["get /api/v1"] << core
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": str(server.url)}}],
                    "users": [{"name": "operator", "user": {"token": "unused"}}],
                    "contexts": [
                        {"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}
                    ],
                    "current-context": "kmock",
                }
            )
        )
        yield emulator, kubeconfig


async def apply(kubeconfig: Path, manifests: list[Manifest]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(find_executable("kubectl")),
        "--kubeconfig",
        str(kubeconfig),
        "apply",
        # The schema is checked offline (test_manifests.py); kmock serves no OpenAPI document.
        "--validate=false",
        "--output=name",
        "--filename=-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate(yaml.safe_dump_all(manifests).encode())
    return await process.wait(), output.decode()


async def test_each_overlay_applies_to_a_kubernetes_api(
    manifests: tuple[Manifest, ...], cluster: tuple[kmock.KubernetesEmulator, Path]
) -> None:
    emulator, kubeconfig = cluster
    # kmock cannot parse the path of the cluster-wide `namespaces` resource
    # (/api/v1/namespaces); the namespaces are checked against the schema only.
    namespaced = [manifest for manifest in manifests if manifest["kind"] != "Namespace"]

    status, output = await apply(kubeconfig, namespaced)

    assert status == 0, output
    received = {
        (stored.raw["kind"], namespace, name): stored.raw
        for (_, namespace, name), stored in emulator.objects.items()
    }
    for manifest in namespaced:
        metadata = manifest["metadata"]
        key = (manifest["kind"], metadata["namespace"], metadata["name"])
        # Everything but the metadata (where kubectl adds its last-applied annotation).
        assert {**received.pop(key), "metadata": None} == {**manifest, "metadata": None}, key
    assert received == {}
