"""Both overlays render, every object is valid for the Kubernetes API, and the deployment has
the properties production relies on: least privilege, restricted pods, probes, a replicated
JetStream cluster."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from ckrv.services.common.settings import CommonSettings
from ckrv.services.gateway.identity.activation import router as activation_router
from ckrv.services.gateway.identity.keys import generate_signing_key
from ckrv.services.operator import SERVICES
from ckrv.services.stack.process import find_executable
from deploy.settings_reference import setting_variables
from tests.integration.deploy.conftest import (
    CONTROL_PLANE,
    JOBS,
    Manifest,
    containers,
    named,
    of_kind,
    pod_specs,
    render,
)

pytestmark = pytest.mark.integration

# The newest Kubernetes whose API schema kubernetes-validate ships.
KUBERNETES_VERSION = kubernetes_validate.latest_version()
# Only these call the Kubernetes API (the runner); everyone else runs without a token.
API_CLIENTS = {"dispatcher", "watcher", "log-relay"}


def env_value(container: Manifest, name: str) -> Manifest:
    found: list[Manifest] = [entry for entry in container.get("env", []) if entry["name"] == name]
    assert len(found) == 1, f"{container['name']}: {name} set {len(found)} times"
    return found[0]


def service_container(manifests: tuple[Manifest, ...], service: str) -> Manifest:
    deployment = named(manifests, "Deployment", service)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    found: Manifest = container
    return found


def test_every_object_is_valid_for_the_kubernetes_api(manifests: tuple[Manifest, ...]) -> None:
    errors = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {error.message}")
    assert not errors


def test_the_schema_check_catches_a_misspelt_or_mistyped_field() -> None:
    gateway = named(render("prod"), "Deployment", "gateway")
    misspelt = copy.deepcopy(gateway)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    mistyped = copy.deepcopy(gateway)
    mistyped["spec"]["replicas"] = "two"
    for broken in (misspelt, mistyped):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_each_service_has_a_deployment_running_it(manifests: tuple[Manifest, ...]) -> None:
    deployments = of_kind(manifests, "Deployment")
    assert {deployment["metadata"]["name"] for deployment in deployments} == set(SERVICES)
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        assert deployment["metadata"]["namespace"] == CONTROL_PLANE
        container = service_container(manifests, name)
        assert container["args"] == [name]
        assert "/ckrv/services" in container["image"]


def test_every_deployment_is_probed_and_has_a_disruption_budget(
    manifests: tuple[Manifest, ...],
) -> None:
    budgets = of_kind(manifests, "PodDisruptionBudget")
    for service in SERVICES:
        deployment = named(manifests, "Deployment", service)
        container = service_container(manifests, service)
        (port,) = container["ports"]
        assert port == {"name": "http", "containerPort": 8080}
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
        selector = deployment["spec"]["selector"]
        assert [
            budget["spec"]["maxUnavailable"]
            for budget in budgets
            if budget["spec"]["selector"] == selector
        ] == [1]


def test_every_pod_meets_the_restricted_pod_security_standard(
    manifests: tuple[Manifest, ...],
) -> None:
    specs = dict(pod_specs(manifests))
    assert len(specs) >= len(SERVICES) + 2
    for owner, spec in specs.items():
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, owner
        assert security["runAsUser"] > 0, owner
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), owner
        assert all("hostPath" not in volume for volume in spec.get("volumes", [])), owner
        for container in containers(spec):
            where = f"{owner} {container['name']}"
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, where
            assert set(container["resources"]["requests"]) == {"cpu", "memory"}, where
            assert set(container["resources"]["limits"]) == {"memory"}, where


def test_both_namespaces_enforce_the_restricted_pod_security_standard(
    manifests: tuple[Manifest, ...],
) -> None:
    for namespace in (CONTROL_PLANE, JOBS):
        labels = named(manifests, "Namespace", namespace)["metadata"]["labels"]
        for mode in ("enforce", "audit", "warn"):
            assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    namespaces = {manifest["metadata"].get("namespace") for manifest in manifests}
    assert namespaces == {None, CONTROL_PLANE, JOBS}


def test_only_the_public_paths_of_the_gateway_are_routed_from_outside(
    manifests: tuple[Manifest, ...],
) -> None:
    service = named(manifests, "Service", "gateway")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "gateway"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    (rule,) = named(manifests, "Ingress", "gateway")["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert {json.dumps(path["backend"]) for path in paths} == {
        json.dumps({"service": {"name": "gateway", "port": {"name": "http"}}})
    }

    def routed(request_path: str) -> bool:
        return any(
            request_path == path["path"]
            or (path["pathType"] == "Prefix" and request_path.startswith(path["path"] + "/"))
            for path in paths
        )

    openapi = json.loads(resources.files("ckrv.schemas").joinpath("openapi.json").read_text())
    public = [*openapi["paths"], "/openapi.json", "/docs"]
    public += [route.path for route in activation_router.routes]  # type: ignore[attr-defined]
    assert [path for path in public if not routed(path)] == []
    assert [path for path in ("/healthz", "/readyz", "/metrics") if routed(path)] == []


def test_only_the_jobs_namespace_is_reachable_through_the_api_and_only_as_needed(
    manifests: tuple[Manifest, ...],
) -> None:
    assert of_kind(manifests, "ClusterRole") == of_kind(manifests, "ClusterRoleBinding") == []
    roles = {role["metadata"]["name"]: role for role in of_kind(manifests, "Role")}
    assert {role["metadata"]["namespace"] for role in roles.values()} == {JOBS}
    rules = {
        name: {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        for name, role in roles.items()
    }
    follow_workloads = {
        *(("batch", "jobs", verb) for verb in ("get", "list", "watch")),
        *(("", "pods", verb) for verb in ("get", "list", "watch")),
        ("", "pods/log", "get"),
    }
    assert rules == {
        "ckrv-workload-manager": follow_workloads
        | {("batch", "jobs", "create"), ("batch", "jobs", "delete"), ("", "pods", "delete")}
        | {("", "secrets", verb) for verb in ("create", "list", "patch", "delete")},
        "ckrv-workload-reader": follow_workloads,
    }
    bindings = {
        binding["roleRef"]["name"]: {
            (subject["kind"], subject["namespace"], subject["name"])
            for subject in binding["subjects"]
        }
        for binding in of_kind(manifests, "RoleBinding")
    }
    assert bindings == {
        "ckrv-workload-manager": {
            ("ServiceAccount", CONTROL_PLANE, "ckrv-dispatcher"),
            ("ServiceAccount", CONTROL_PLANE, "ckrv-watcher"),
        },
        "ckrv-workload-reader": {("ServiceAccount", CONTROL_PLANE, "ckrv-log-relay")},
    }


def test_only_the_services_using_the_api_get_a_token(manifests: tuple[Manifest, ...]) -> None:
    for account in of_kind(manifests, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False, account["metadata"]["name"]
    for owner, spec in pod_specs(manifests):
        name = owner.split("/", 1)[1]
        assert spec.get("automountServiceAccountToken", False) is (name in API_CLIENTS), owner
        if name in SERVICES:
            assert spec["serviceAccountName"] == f"ckrv-{name}"


def test_job_pods_have_an_account_without_rights_and_reach_only_dns_https_and_ssh(
    overlay: str, manifests: tuple[Manifest, ...]
) -> None:
    orchestrator = named(manifests, "ServiceAccount", "ckrv-orchestrator")
    assert orchestrator["metadata"]["namespace"] == JOBS
    assert orchestrator["automountServiceAccountToken"] is False
    subjects = [s["name"] for b in of_kind(manifests, "RoleBinding") for s in b["subjects"]]
    assert "ckrv-orchestrator" not in subjects

    (policy,) = of_kind(manifests, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == JOBS
    assert policy["spec"]["podSelector"] == {}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    dns, outside, *dev_storage = policy["spec"]["egress"]
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    assert {(port["protocol"], port["port"]) for port in dns["ports"]} == {
        ("UDP", 53),
        ("TCP", 53),
    }
    assert {(port["protocol"], port["port"]) for port in outside["ports"]} == {
        ("TCP", 443),
        ("TCP", 22),
    }
    assert [peer["ipBlock"]["cidr"] for peer in outside["to"]] == ["0.0.0.0/0", "::/0"]
    if overlay == "dev":
        # Results go to the in-cluster SeaweedFS over plain HTTP, and nowhere else.
        (storage,) = dev_storage
        assert storage["ports"] == [{"protocol": "TCP", "port": 8333}]
        assert storage["to"][0]["podSelector"] == {
            "matchLabels": {"app.kubernetes.io/name": "seaweedfs"}
        }
    else:
        assert dev_storage == []


def test_every_setting_named_in_the_manifests_is_one_the_services_read(
    manifests: tuple[Manifest, ...],
) -> None:
    named_settings = set()
    for manifest in of_kind(manifests, "ConfigMap") + of_kind(manifests, "Secret"):
        named_settings |= set(manifest.get("data", {}))
    for _, spec in pod_specs(manifests):
        for container in containers(spec):
            named_settings |= {entry["name"] for entry in container.get("env", [])}
    ckrv_settings = {name for name in named_settings if name.startswith("CKRV_")}
    assert ckrv_settings - setting_variables() == set()
    assert "CKRV_NATS_URL" in ckrv_settings


def test_each_service_connects_to_nats_as_its_own_user(manifests: tuple[Manifest, ...]) -> None:
    (nats,) = named(manifests, "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    for service in SERVICES:
        container = service_container(manifests, service)
        password = env_value(container, "NATS_PASSWORD")["valueFrom"]["secretKeyRef"]
        assert password["name"].startswith("ckrv-nats-credentials")
        assert password["key"] == service
        url = env_value(container, "CKRV_NATS_URL")["value"]
        assert url == f"nats://{service}:$(NATS_PASSWORD)@nats:4222"
        variable = f"NATS_{service.upper().replace('-', '_')}_PASSWORD"
        assert env_value(nats, variable)["valueFrom"]["secretKeyRef"] == password


def test_the_nats_configuration_is_accepted_by_nats_server(
    manifests: tuple[Manifest, ...], tmp_path: Path
) -> None:
    config = named(manifests, "ConfigMap", "nats-config")["data"]
    for name, text in config.items():
        (tmp_path / name).write_text(text)
    (nats,) = named(manifests, "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"]
    environment = {entry["name"]: "secret" for entry in nats["env"]}
    assert nats["command"] == ["nats-server", "--config", "/etc/nats/nats-server.conf"]
    checked = subprocess.run(
        [str(find_executable("nats-server")), "-c", str(tmp_path / "nats-server.conf"), "-t"],
        env=environment | {"NATS_SERVER_NAME": "nats-0"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stderr + checked.stdout
    users = re.findall(r"user: ([\w-]+),", config["nats-server.conf"])
    assert sorted(users) == sorted(SERVICES)
    assert re.search(r"^\s*sync_interval: always$", config["nats-server.conf"], re.MULTILINE)


def test_prod_runs_a_three_member_jetstream_cluster_keeping_every_stream_on_each() -> None:
    manifests = render("prod")
    nats = named(manifests, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["podManagementPolicy"] == "Parallel"
    routes = re.findall(
        r"nats-route://(nats-\d+)\.nats:6222",
        named(manifests, "ConfigMap", "nats-config")["data"]["cluster.conf"],
    )
    assert routes == [f"nats-{index}" for index in range(3)]
    assert named(manifests, "ConfigMap", "ckrv-settings")["data"]["CKRV_STREAM_REPLICAS"] == "3"
    budget = named(manifests, "PodDisruptionBudget", "nats")
    assert budget["spec"]["maxUnavailable"] == 1


def test_prod_runs_two_replicas_of_every_service() -> None:
    manifests = render("prod")
    for service in SERVICES:
        spec = named(manifests, "Deployment", service)["spec"]
        assert spec["replicas"] == 2, service
        # A new pod is ready before an old one goes: every service's replicas share the work.
        assert spec["strategy"]["type"] == "RollingUpdate", service
    settings = named(manifests, "ConfigMap", "ckrv-settings")["data"]
    assert settings["CKRV_ENV"] == "production"
    # No development dependency is deployed, and no secret is part of the manifests.
    assert of_kind(manifests, "Secret") == []
    assert {s["metadata"]["name"] for s in of_kind(manifests, "StatefulSet")} == {"nats"}


def test_dev_runs_postgresql_and_seaweedfs_in_the_cluster() -> None:
    manifests = render("dev")
    assert {s["metadata"]["name"] for s in of_kind(manifests, "StatefulSet")} == {
        "nats",
        "postgres",
        "seaweedfs",
    }
    assert named(manifests, "StatefulSet", "nats")["spec"]["replicas"] == 1
    settings = named(manifests, "ConfigMap", "ckrv-settings")["data"]
    assert settings["CKRV_ENV"] == "dev"
    assert settings["CKRV_STREAM_REPLICAS"] == "1"
    assert settings["CKRV_S3_ENDPOINT"].startswith("http://seaweedfs.ckrv-system.svc")
    for service in ("postgres", "seaweedfs"):
        assert named(manifests, "Service", service)["spec"]["selector"] == {
            "app.kubernetes.io/name": service
        }


def production_secrets() -> dict[str, dict[str, str]]:
    """The Secrets deploy/README.md has the operator create for `prod`, with made-up values."""
    return {
        "ckrv-secrets": {
            "CKRV_DATABASE_URL": "postgresql://ckrv:password@db.example.com:5432/ckrv",
            "CKRV_S3_ACCESS_KEY": "access",
            "CKRV_S3_SECRET_KEY": "secret",
            "CKRV_CREDENTIAL_KEYS": "k1:" + base64.b64encode(bytes(32)).decode(),
        },
        "ckrv-gateway-secrets": {
            "signing-keys": json.dumps({"keys": [generate_signing_key()]}),
            "session-secret": "s" * 48,
        },
        "ckrv-nats-credentials": {service: f"{service}password" for service in SERVICES},
    }


def pod_environment(
    container: Manifest, config: dict[str, str], secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The variables Kubernetes gives the container, `$(NAME)` references expanded."""

    def secret(name: str) -> dict[str, str] | None:
        # Generated Secrets carry a hash suffix; the operator's do not.
        return secrets.get(name, secrets.get(name.rsplit("-", 1)[0]))

    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment |= config
        else:
            found = secret(source["secretRef"]["name"])
            assert found is not None, source
            environment |= found
    for entry in container.get("env", []):
        if "value" in entry:
            environment[entry["name"]] = re.sub(
                r"\$\((\w+)\)", lambda match: environment[match[1]], entry["value"]
            )
            continue
        reference = entry["valueFrom"]["secretKeyRef"]
        value = (secret(reference["name"]) or {}).get(reference["key"])
        assert value is not None or reference.get("optional"), entry["name"]
        if value is not None:
            environment[entry["name"]] = value
    return environment


def test_each_pod_gets_a_complete_configuration_of_its_service(
    overlay: str, manifests: tuple[Manifest, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = named(manifests, "ConfigMap", "ckrv-settings")["data"]
    secrets = (
        production_secrets()
        if overlay == "prod"
        else {
            secret["metadata"]["name"]: {
                key: base64.b64decode(value).decode() for key, value in secret["data"].items()
            }
            for secret in of_kind(manifests, "Secret")
        }
    )
    for owner, spec in pod_specs(manifests):
        if not spec["containers"][0]["image"].startswith(("localhost/ckrv", "registry")):
            continue
        for container in containers(spec):
            for variable in [name for name in os.environ if name.startswith("CKRV_")]:
                monkeypatch.delenv(variable)
            for variable, value in pod_environment(container, config, secrets).items():
                monkeypatch.setenv(variable, value)
            # What `ckrv-cloud` builds first, whatever it runs; outside dev it refuses to
            # start on a missing or development value.
            common = CommonSettings()
            service = container.get("args", [None])[0]
            assert common.nats_url.startswith(f"nats://{service or 'artifacts'}:"), owner
            if service is not None:
                _, settings = SERVICES[service](common)
                assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080), owner


def test_an_overlay_names_one_public_address_and_one_release(
    overlay: str, manifests: tuple[Manifest, ...]
) -> None:
    settings = named(manifests, "ConfigMap", "ckrv-settings")["data"]
    public_url = urlsplit(settings["CKRV_GATEWAY_PUBLIC_URL"])
    ingress = named(manifests, "Ingress", "gateway")["spec"]
    assert [rule["host"] for rule in ingress["rules"]] == [public_url.hostname]
    if overlay == "prod":
        assert public_url.scheme == "https"
        assert ingress["tls"][0]["hosts"] == [public_url.hostname]
    # The worker image jobs run comes from the same build as the services.
    services_image = service_container(manifests, "gateway")["image"]
    worker_image = settings["CKRV_RUNNER_KUBERNETES_IMAGE"]
    assert worker_image == services_image.replace("/ckrv/services:", "/ckrv/worker:")
