"""Every manifest the operator writes validates against the Kubernetes 1.30 schemas (strict).

Also what makes its pods fit for production: models from storage (an init container that
downloads s3:// and http(s):// models into a shared emptyDir, a read-only PVC mount for pvc://),
a startup probe sized to model loading, pull secrets and pull policies, and a router of two
replicas spread over nodes behind a PodDisruptionBudget.

The emulator the end-to-end tests run against validates nothing, so this is where schema
validity, the restricted pod security profile and the object names are checked.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from accordion.operator.config import OperatorConfig
from accordion.operator.control.desired import WorkerKey, WorkerSpec
from accordion.operator.k8s import (
    ANNOTATION_SPEC,
    COMPONENT_WORKER,
    LABEL_COMPONENT,
    LABEL_SERVICE,
    LABEL_VARIANT,
    Manifest,
    observe_routing,
    observe_worker,
    router_deployment,
    router_pdb,
    service_url,
    worker_deployment,
    worker_name,
    workers_pdb,
)
from accordion.workers.config import RoutingTable, WorkerConfig

from .example_manifests import APPLIED_AT_S, example_manifests

K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def manifests() -> list[Manifest]:
    """Every kind of object, for the example cluster's plan (all replicas ready)."""
    return example_manifests()


def test_every_manifest_validates_strictly(manifests: list[Manifest]) -> None:
    kinds = {m["kind"] for m in manifests}
    assert kinds == {"Deployment", "Service", "ConfigMap"}
    for m in manifests:
        kubernetes_validate.validate(m, K8S_VERSION, strict=True)


def test_pods_follow_the_restricted_security_profile(manifests: list[Manifest]) -> None:
    for m in manifests:
        if m["kind"] != "Deployment":
            continue
        pod = m["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_labels_owner_references_and_worker_settings(manifests: list[Manifest]) -> None:
    for m in manifests:
        labels = m["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "accordion-operator"
        assert labels["app.kubernetes.io/part-of"] == "accordion"
        assert "accordion.dev/service" in labels
        (owner,) = m["metadata"]["ownerReferences"]
        assert owner["kind"] == "InferenceService"
        assert owner["controller"] is True
        assert len(m["metadata"]["name"]) <= 63
    workers = [
        m
        for m in manifests
        if m["kind"] == "Deployment"
        and m["metadata"]["labels"]["app.kubernetes.io/name"] == "accordion-worker"
    ]
    gpu = next(m for m in workers if m["metadata"]["labels"]["accordion.dev/pool"] == "gpu-t4")
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    env = pod["containers"][0]["env"][0]
    cfg = WorkerConfig.model_validate_json(env["value"])
    assert cfg.device == "cuda"
    assert cfg.batching.max_batch_size >= 1
    assert cfg.port == 8080
    # Terminating, it drains (`accordion.workers.drain`), then has 30 s for what is in flight.
    assert cfg.drain_s == 5.0
    assert pod["terminationGracePeriodSeconds"] == 35


def test_objects_read_back_into_the_world(manifests: list[Manifest]) -> None:
    for m in manifests:
        if m["kind"] == "Deployment" and ANNOTATION_SPEC in m["metadata"].get("annotations", {}):
            running = observe_worker({**m, "status": {"readyReplicas": 1}})
            assert running is not None
            assert running.spec.replicas == m["spec"]["replicas"]
            assert running.ready_replicas == 1
        if m["kind"] == "ConfigMap":
            applied = observe_routing(m)
            assert applied is not None
            assert applied.applied_at_s == APPLIED_AT_S
            table = RoutingTable.model_validate(json.loads(m["data"]["routing.json"]))
            assert table.version == applied.routing.digest()
            assert all(b.url.startswith("http://") for b in table.backends)


def test_worker_names_are_short_unique_and_dns_labels() -> None:
    long = WorkerKey(service="ns/" + "s" * 63, variant="v" * 40, pool="p" * 63)
    a = WorkerKey(service="ns/a-b", variant="c", pool="d")
    b = WorkerKey(service="ns/a", variant="b-c", pool="d")
    assert len(worker_name(long)) <= 63
    assert worker_name(a) != worker_name(b)


# ------------------------------------------------------------------ production settings


def _worker_deployment(uri: str, **settings: object) -> Manifest:
    spec = WorkerSpec(
        key=WorkerKey(service="ml/classifier", variant="small", pool="cpu"),
        replicas=1,
        max_batch_size=8,
        capacity_qps_per_replica=10.0,
        accuracy=70.0,
        slo_ms=100.0,
        model_uri=uri,
    )
    deployment = worker_deployment(spec, "uid-1", OperatorConfig.model_validate(settings))
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    return deployment


def _model_in_config(deployment: Manifest) -> str:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return WorkerConfig.model_validate_json(container["env"][0]["value"]).model


def test_an_s3_model_is_downloaded_by_an_init_container_into_a_shared_volume() -> None:
    deployment = _worker_deployment("s3://models/resnet/v1/resnet50.pt")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (worker,) = pod["containers"]
    assert init["name"] == "storage-initializer"
    assert init["image"] == worker["image"]
    assert [*init["command"], *init["args"]] == [
        "accordion-worker",
        "fetch",
        "s3://models/resnet/v1/resnet50.pt",
        "--dest",
        "/mnt/models",
    ]
    assert init["envFrom"] == [{"secretRef": {"name": "accordion-storage", "optional": True}}]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    shared = {m["name"]: m for m in init["volumeMounts"]}["model-store"]
    assert shared["mountPath"] == "/mnt/models"
    mounted = {m["name"]: m for m in worker["volumeMounts"]}["model-store"]
    assert mounted == {"name": "model-store", "mountPath": "/mnt/models", "readOnly": True}
    assert {"name": "model-store", "emptyDir": {}} in pod["volumes"]
    assert _model_in_config(deployment) == "/mnt/models/resnet50.pt"
    no_secret = _worker_deployment("https://models.example/r.pt", storage_secret_name=None)
    (init,) = no_secret["spec"]["template"]["spec"]["initContainers"]
    assert "envFrom" not in init
    assert _model_in_config(no_secret) == "/mnt/models/r.pt"


def test_a_pvc_model_is_mounted_read_only_and_a_path_needs_nothing() -> None:
    deployment = _worker_deployment("pvc://model-store/resnet/resnet50.pt")
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    (claim,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == claim["name"]]
    assert mount == {"name": claim["name"], "mountPath": "/mnt/pvc/model-store", "readOnly": True}
    assert _model_in_config(deployment) == "/mnt/pvc/model-store/resnet/resnet50.pt"
    for uri, model in (
        ("file:///models/r.pt", "/models/r.pt"),
        ("builtin:demo-s", "builtin:demo-s"),
    ):
        local = _worker_deployment(uri)
        assert "initContainers" not in local["spec"]["template"]["spec"]
        assert [v["name"] for v in local["spec"]["template"]["spec"]["volumes"]] == ["tmp"]
        assert _model_in_config(local) == model


@pytest.mark.parametrize("timeout_s", [30.0, 600.0, 1801.0])
def test_the_startup_probe_covers_model_loading(timeout_s: float) -> None:
    """Liveness does not run before the startup probe succeeds, which it may take timeout_s to."""
    deployment = _worker_deployment("builtin:demo-s", worker_startup_timeout_s=timeout_s)
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    startup = worker["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert timeout_s <= budget < timeout_s + startup["periodSeconds"]


def test_pull_secrets_and_policies_reach_every_pod() -> None:
    settings = {
        "image_pull_secrets": ["regcred", "mirror"],
        "image_pull_policy": "Always",
        "router_image_pull_policy": "Never",
    }
    config = OperatorConfig.model_validate(settings)
    worker = _worker_deployment("s3://models/m.pt", **settings)["spec"]["template"]["spec"]
    router = router_deployment("ml/classifier", "uid-1", config)
    kubernetes_validate.validate(router, K8S_VERSION, strict=True)
    router_pod = router["spec"]["template"]["spec"]
    for pod in (worker, router_pod):
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert {c["imagePullPolicy"] for c in worker["containers"] + worker["initContainers"]} == {
        "Always"
    }
    assert router_pod["containers"][0]["imagePullPolicy"] == "Never"
    assert (
        "imagePullSecrets"
        not in router_deployment("ml/c", "u", OperatorConfig())["spec"]["template"]["spec"]
    )


def test_the_router_runs_two_replicas_spread_behind_a_disruption_budget() -> None:
    config = OperatorConfig()
    router = router_deployment("ml/classifier", "uid-1", config)
    assert router["spec"]["replicas"] == 2
    pod = router["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"] == router["spec"]["selector"]
    assert pod["containers"][0]["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Terminating, it serves on for its drain, then has the default 30 s for what is in flight.
    args = pod["containers"][0]["args"]
    assert args[args.index("--drain-seconds") + 1] == "5"
    assert pod["terminationGracePeriodSeconds"] == 35
    undrained = router_deployment("ml/classifier", "uid-1", OperatorConfig(router_drain_s=0))
    assert "--drain-seconds" not in undrained["spec"]["template"]["spec"]["containers"][0]["args"]
    pdb = router_pdb("ml/classifier", "uid-1")
    kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)
    assert pdb["metadata"]["name"] == router["metadata"]["name"]
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = router["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_a_services_workers_share_one_budget_that_no_failing_worker_can_block(
    manifests: list[Manifest],
) -> None:
    """One PodDisruptionBudget over every worker group of a service (a node drain evicts one
    of its replicas at a time), none of another service's or a router's; unhealthy replicas
    may always go (a crash-looping worker does not hold up a drain)."""
    pods = {
        (m["metadata"]["namespace"], m["metadata"]["name"]): m["spec"]["template"]["metadata"][
            "labels"
        ]
        for m in manifests
        if m["kind"] == "Deployment"
    }
    workers = {k: v for k, v in pods.items() if v[LABEL_COMPONENT] == COMPONENT_WORKER}
    # A second group of the first service (another variant), as a swap or a mixed plan runs.
    (ns, first), labels = next(iter(workers.items()))
    second = labels | {"app.kubernetes.io/instance": f"{first}-b", LABEL_VARIANT: "another"}
    pods[(ns, f"{first}-b")] = workers[(ns, f"{first}-b")] = second
    services = {(ns, v[LABEL_SERVICE]) for (ns, _), v in workers.items()}
    assert len(workers) > len(services) >= 2
    for ns, name in services:
        pdb = workers_pdb(f"{ns}/{name}", "uid-1")
        kubernetes_validate.validate(pdb, K8S_VERSION, strict=True)
        assert pdb["metadata"]["name"] == f"{name}-workers"
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        selector = pdb["spec"]["selector"]["matchLabels"].items()
        selected = {k for k, labels in pods.items() if k[0] == ns and selector <= labels.items()}
        mine = {k for k, labels in workers.items() if k[0] == ns and labels[LABEL_SERVICE] == name}
        assert selected == mine


def test_service_url_is_the_router_services_cluster_address() -> None:
    config = OperatorConfig(cluster_domain="corp.internal")
    assert service_url("ml/classifier", config) == "http://classifier.ml.svc.corp.internal"
    svc = next(
        m
        for m in example_manifests()
        if m["kind"] == "Service"
        and m["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    )
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    assert service_url(f"{ns}/{name}", OperatorConfig()) == f"http://{name}.{ns}.svc.cluster.local"
    assert svc["spec"]["ports"][0]["port"] == 80


def test_workers_and_routers_serve_grpc_beside_http() -> None:
    """KServe v2 over gRPC on both (ports named grpc, appProtocol on the Services); the
    worker's configuration and the router's arguments name the same ports."""
    from accordion.operator.k8s import router_deployment, router_service, worker_service

    config = OperatorConfig()
    spec = WorkerSpec(
        key=WorkerKey(service="ns/svc", variant="v", pool="gpu"),
        replicas=1,
        max_batch_size=8,
        capacity_qps_per_replica=10.0,
        accuracy=70.0,
        slo_ms=100.0,
        model_uri="/models/v.pt",
    )
    worker = worker_deployment(spec, "uid", config)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in worker["ports"]
    assert json.loads(worker["env"][0]["value"])["grpc_port"] == 8081
    ports = worker_service(spec.key, "uid", config)["spec"]["ports"]
    assert {p["name"]: p.get("appProtocol") for p in ports} == {"http": None, "grpc": "grpc"}
    router = router_deployment("ns/svc", "uid", config)["spec"]["template"]["spec"]
    args = router["containers"][0]["args"]
    assert args[args.index("--grpc-port") + 1] == "8001"
    endpoint = router_service("ns/svc", "uid", config)["spec"]["ports"]
    assert {(p["name"], p["port"]) for p in endpoint} == {("http", 80), ("grpc", 8001)}
    none = OperatorConfig(worker_grpc_port=None, router_grpc_port=None)
    assert [p["name"] for p in worker_service(spec.key, "uid", none)["spec"]["ports"]] == ["http"]
