"""Every manifest the operator writes validates against the Kubernetes 1.30 schemas (strict).

The emulator the end-to-end tests run against validates nothing, so this is where schema
validity, the restricted pod security profile and the object names are checked.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from accordion.operator.control.desired import WorkerKey
from accordion.operator.k8s import (
    ANNOTATION_SPEC,
    Manifest,
    observe_routing,
    observe_worker,
    worker_name,
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
