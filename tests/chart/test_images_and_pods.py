"""Images, pull secrets and the data-plane pods' production settings, from values to pods.

Rendered with the real helm, then followed through: the operator settings file the chart
writes is parsed by the operator's own `OperatorConfig`, and the operator's own builders make
the worker and router Deployments from it, so a value that is rendered but never reaches a
pod fails here. Every rendered object and every built Deployment validates strictly.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, by_kind, objects, run_helm

DIGEST = "sha256:" + "0123456789abcdef" * 4
K8S_VERSION = "1.30.0"


def settings(*sets: str) -> Any:
    config = pytest.importorskip("accordion.operator.config")
    (cm,) = [
        o for o in by_kind(objects(*sets), "ConfigMap") if o["metadata"]["name"].endswith("-config")
    ]
    return config.OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


def operator_pod(*sets: str) -> dict[str, Any]:
    (deployment,) = by_kind(objects(*sets), "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def data_plane(*sets: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(worker pod, router pod) the operator builds with the chart's settings."""
    k8s = pytest.importorskip("accordion.operator.k8s")
    desired = pytest.importorskip("accordion.operator.control.desired")
    config = settings(*sets)
    spec = desired.WorkerSpec(
        key=desired.WorkerKey(service="ml/classifier", variant="v", pool="cpu"),
        replicas=1,
        max_batch_size=4,
        capacity_qps_per_replica=1.0,
        accuracy=50.0,
        slo_ms=100.0,
        model_uri="s3://models/classifier/model.pt",
    )
    worker = k8s.worker_deployment(spec, "uid", config)
    router = k8s.router_deployment("ml/classifier", "uid", config)
    for deployment in (worker, router):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    return worker["spec"]["template"]["spec"], router["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        ("registry.corp:5000", "registry.corp:5000/accordion-dev/accordion-worker:0.1.0"),
        ("mirror.example/team", "mirror.example/team/accordion-dev/accordion-worker:0.1.0"),
        ("localhost:5000", "localhost:5000/accordion-dev/accordion-worker:0.1.0"),
    ],
)
def test_image_registry_replaces_the_registry(registry: str, expected: str) -> None:
    sets = (f"imageRegistry={registry}",)
    config = settings(*sets)
    assert config.worker_image == expected
    assert config.router_image == expected
    operator_image = operator_pod(*sets)["containers"][0]["image"]
    assert operator_image == expected.replace("accordion-worker", "accordion-operator")


def test_a_repository_without_a_registry_gets_one_prepended() -> None:
    config = settings("imageRegistry=reg.local", "workers.image.repository=team/worker")
    assert config.worker_image == "reg.local/team/worker:0.1.0"
    assert settings("workers.image.repository=localhost/worker").worker_image == (
        "localhost/worker:0.1.0"
    )


def test_a_digest_pins_the_image() -> None:
    sets = (
        f"workers.image.digest={DIGEST}",
        "workers.image.tag=ignored",
        f"operator.image.digest={DIGEST}",
        "imageRegistry=reg.local",
    )
    config = settings(*sets)
    assert config.worker_image == f"reg.local/accordion-dev/accordion-worker@{DIGEST}"
    assert config.router_image == "reg.local/accordion-dev/accordion-worker:0.1.0"
    assert operator_pod(*sets)["containers"][0]["image"].endswith(f"accordion-operator@{DIGEST}")
    worker, _ = data_plane(*sets)
    assert worker["containers"][0]["image"] == config.worker_image
    assert worker["initContainers"][0]["image"] == config.worker_image


def test_a_malformed_digest_is_refused_at_install() -> None:
    proc = run_helm("template", "x", str(CHART), "--set", "workers.image.digest=latest")
    assert proc.returncode != 0
    assert "digest" in proc.stderr


def test_pull_secrets_reach_the_operator_workers_and_routers() -> None:
    sets = ("imagePullSecrets[0].name=regcred", "imagePullSecrets[1].name=mirror")
    expected = [{"name": "regcred"}, {"name": "mirror"}]
    assert operator_pod(*sets)["imagePullSecrets"] == expected
    assert settings(*sets).image_pull_secrets == ["regcred", "mirror"]
    worker, router = data_plane(*sets)
    assert worker["imagePullSecrets"] == expected
    assert router["imagePullSecrets"] == expected
    bare_worker, bare_router = data_plane()
    assert "imagePullSecrets" not in bare_worker
    assert "imagePullSecrets" not in bare_router


def test_each_pull_policy_reaches_its_pods() -> None:
    sets = ("router.image.pullPolicy=Always", "workers.image.pullPolicy=Never")
    worker, router = data_plane(*sets)
    assert router["containers"][0]["imagePullPolicy"] == "Always"
    assert worker["containers"][0]["imagePullPolicy"] == "Never"
    assert worker["initContainers"][0]["imagePullPolicy"] == "Never"


def test_router_replicas_startup_budget_and_storage_secret() -> None:
    worker, _ = data_plane()
    config = settings()
    assert config.router_replicas == 2
    assert worker["initContainers"][0]["envFrom"][0]["secretRef"]["name"] == "accordion-storage"
    startup = worker["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    sets = ("router.replicas=3", "workers.startupTimeoutSeconds=1800", "workers.storageSecretName=")
    worker, _ = data_plane(*sets)
    assert settings(*sets).router_replicas == 3
    assert "envFrom" not in worker["initContainers"][0]
    startup = worker["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    custom = data_plane("workers.storageSecretName=s3-creds")[0]
    assert custom["initContainers"][0]["envFrom"][0]["secretRef"]["name"] == "s3-creds"


PRODUCTION = (
    "imageRegistry=registry.corp:5000",
    f"operator.image.digest={DIGEST}",
    "imagePullSecrets[0].name=regcred",
    "router.image.pullPolicy=Always",
    "router.replicas=3",
    "workers.startupTimeoutSeconds=1200",
)


def test_production_values_lint_and_validate() -> None:
    args = [a for s in PRODUCTION for a in ("--set", s)]
    proc = run_helm("lint", "--strict", str(CHART), *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for obj in objects(*PRODUCTION):
        if obj["apiVersion"].startswith(("monitoring.coreos.com/", "kopf.dev/")):
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_notes_name_the_resource_in_full() -> None:
    """On a cluster with KServe too, `kubectl get inferenceservices` may mean KServe's."""
    proc = run_helm("install", "--dry-run", "x", str(CHART))
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    commands = [line.strip() for line in notes.splitlines() if line.strip().startswith("kubectl")]
    about_services = [c for c in commands if "inferenceservice" in c]
    assert about_services
    assert all("inferenceservices.accordion.dev" in c for c in about_services), about_services
    assert "{.status.url}" in notes


def test_the_mig_config_namespace_reaches_the_operator() -> None:
    """`operator.mig.configNamespace` is where the operator writes the MIG manager's ConfigMap."""
    assert settings().mig_config_namespace == "gpu-operator"
    assert settings("operator.mig.configNamespace=nvidia-gpu").mig_config_namespace == "nvidia-gpu"
