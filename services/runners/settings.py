"""Runner settings (`CKRV_RUNNER_*`): which backend holds workloads, and how each runs them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from ckrv.events.catalog import RunnerBackend
from ckrv.services.common.settings import CkrvSettings


class ImagePullPolicy(StrEnum):
    """When the kubelet pulls the worker image (Kubernetes' own words)."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class SandboxMode(StrEnum):
    """Whether the local runner wraps workloads in bubblewrap."""

    AUTO = "auto"
    """When bubblewrap is installed and works here; a plain process otherwise."""
    REQUIRED = "required"
    """Always; the runner refuses to start without a working bubblewrap."""
    OFF = "off"
    """Never: the workload sees the machine as the runner's user does."""


class RunnerSettings(CkrvSettings):
    model_config = SettingsConfigDict(env_prefix="CKRV_RUNNER_")

    backend: RunnerBackend = Field(
        default=RunnerBackend.LOCAL, description="Where workloads run: `local` or `kubernetes`."
    )
    root: Path = Field(
        default=Path(".ckrv-state/runner"),
        description="Local runner: the folder holding one folder per workload.",
    )
    sandbox: SandboxMode = Field(
        default=SandboxMode.AUTO,
        description="Local runner: `auto`, `required` or `off` (bubblewrap around workloads).",
    )
    sandbox_read_only_paths: tuple[Path, ...] = Field(
        default=(),
        description="Local runner: folders a sandboxed workload may read besides the system, "
        "the Python installation and Chakravarti's code (e.g. where agent CLIs live).",
    )
    poll_interval_seconds: float = Field(
        default=0.05,
        gt=0,
        description="Local runner: how often watchers and output followers look for changes.",
    )
    kubernetes_kubeconfig: Path | None = Field(
        default=None,
        description="Kubernetes runner: the kubeconfig file to reach the cluster with; none to "
        "use the service account of the pod the service runs in (in-cluster).",
    )
    kubernetes_context: str | None = Field(
        default=None,
        description="Kubernetes runner: the kubeconfig context to use; none for its current one.",
    )
    kubernetes_namespace: str = Field(
        default="ckrv-jobs",
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Kubernetes runner: the namespace holding the jobs' Jobs, Pods and Secrets.",
    )
    kubernetes_image: str = Field(
        default="ckrv-worker:latest",
        min_length=1,
        description="Kubernetes runner: the worker image every job's pod runs.",
    )
    kubernetes_image_pull_policy: ImagePullPolicy = Field(
        default=ImagePullPolicy.IF_NOT_PRESENT,
        description="Kubernetes runner: `Always`, `IfNotPresent` or `Never`.",
    )
    kubernetes_service_account: str = Field(
        default="ckrv-orchestrator",
        min_length=1,
        description="Kubernetes runner: the service account job pods run as (its API token is "
        "not mounted: a job needs no access to the cluster).",
    )
    kubernetes_run_as_user: int = Field(
        default=10001,
        ge=1,
        description="Kubernetes runner: the non-root user (and group) id job pods run as; the "
        "input files are readable by that group.",
    )
    kubernetes_ttl_seconds_after_finished: int = Field(
        default=3600,
        ge=0,
        description="Kubernetes runner: how long Kubernetes keeps a finished Job (and its pod "
        "and output) before deleting it, if the watcher has not collected it first; the "
        "watcher deletes the job's Secret as soon as the job ends.",
    )
    kubernetes_image_pull_limit_seconds: float = Field(
        default=300.0,
        ge=0,
        description="Kubernetes runner: how long a pod may fail to pull its image "
        "(ErrImagePull, ImagePullBackOff) before its workload counts as failed.",
    )
    kubernetes_max_connections: int = Field(
        default=1000,
        ge=4,
        description="Kubernetes runner: most connections open to the API server at once; each "
        "followed output and each watch holds one.",
    )
    kubernetes_poll_interval_seconds: float = Field(
        default=0.5,
        gt=0,
        description="Kubernetes runner: how often `stop` and output followers look again while "
        "they wait for a Job to go or a pod to start.",
    )
