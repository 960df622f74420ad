"""The real operator (`kopf run` subprocess) against kmock's Kubernetes emulator over HTTP.

The tests act as the user (create, patch and delete InferenceServices and DevicePools) and as
the kubelet (they mark worker Deployments ready by patching their status: the emulator runs
no controllers), and assert on the objects stored in the emulator. Each test uses its own
namespace and its own pool, so tests sharing the operator process do not plan for each other.

Gaps of the emulator and where they are covered instead (see conftest.py): schema validation
and CEL (test_crds.py validates specs against the CRD schema; the operator's own validation
gives InvalidSpec here), owner-reference garbage collection (the operator deletes owned
objects itself; ownerReferences are asserted here and validated in test_k8s_manifests.py),
server-side apply and strategic merge (the operator uses JSON merge patches only).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from .conftest import EmulatorThread, Operator, wait_for

GROUP, VERSION = "accordion.dev", "v1alpha1"

pytestmark = pytest.mark.timeout(120)


def isvc(name: str, ns: str, pool: str, qps: float, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "slo": {"latencyMs": 100},
            "demand": {"source": "Static", "qps": qps, "headroom": 0.0},
            "variants": [
                {
                    "name": "big",
                    "accuracy": 80,
                    "model": {"storageUri": "/models/big.pt"},
                    "profiles": [{"pool": pool, "batches": [{"batchSize": 1, "p50Ms": 20}]}],
                },
                {
                    "name": "small",
                    "accuracy": 70,
                    "model": {"storageUri": "/models/small.pt"},
                    "profiles": [{"pool": pool, "batches": [{"batchSize": 1, "p50Ms": 5}]}],
                },
            ],
            **spec,
        },
    }


def device_pool(name: str, devices: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DevicePool",
        "metadata": {"name": name},
        "spec": {"devices": devices, "resources": {"limits": {"nvidia.com/gpu": 1}}},
    }


class Cluster:
    """The user's and the kubelet's view of the emulator, through the kubernetes client."""

    def __init__(self, api: k8s.ApiClient, emulator: EmulatorThread) -> None:
        self.emulator = emulator
        self.custom: Any = k8s.CustomObjectsApi(api)
        self.apps: Any = k8s.AppsV1Api(api)
        self.core: Any = k8s.CoreV1Api(api)

    @staticmethod
    def _json(resp: Any) -> Any:
        return json.loads(resp.data)

    def create_pool(self, name: str, devices: int) -> None:
        self.custom.create_cluster_custom_object(
            GROUP, VERSION, "devicepools", device_pool(name, devices)
        )

    def patch_pool(self, name: str, devices: int) -> None:
        self.custom.patch_cluster_custom_object(
            GROUP, VERSION, "devicepools", name, {"spec": {"devices": devices}}
        )

    def create(self, body: dict[str, Any]) -> None:
        ns = body["metadata"]["namespace"]
        self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, "inferenceservices", body)

    def patch(self, ns: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "inferenceservices", name, body
        )

    def delete(self, ns: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "inferenceservices", name)

    def get(self, ns: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, ns, "inferenceservices", name
        )
        return obj

    def status(self, ns: str, name: str) -> dict[str, Any]:
        return dict(self.get(ns, name).get("status") or {})

    def conditions(self, ns: str, name: str) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in self.status(ns, name).get("conditions") or []}

    def _in(self, items: list[dict[str, Any]], ns: str) -> list[dict[str, Any]]:
        return [i for i in items if i["metadata"].get("namespace") == ns]

    def deployments(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.apps.list_namespaced_deployment(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def workers(self, ns: str) -> dict[str, dict[str, Any]]:
        """Worker Deployments by variant."""
        return {
            d["metadata"]["labels"]["accordion.dev/variant"]: d
            for d in self.deployments(ns)
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        }

    def services(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.core.list_namespaced_service(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def configmaps(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.core.list_namespaced_config_map(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def events(self, ns: str) -> list[dict[str, Any]]:
        items = self._json(self.core.list_namespaced_event(ns, _preload_content=False))
        return self._in(items["items"], ns)

    def routing(self, ns: str, name: str) -> dict[str, Any] | None:
        for cm in self.configmaps(ns):
            if cm["metadata"]["name"] == f"{name}-routing":
                raw = (cm.get("data") or {}).get("routing.json")
                return json.loads(raw) if raw else None
        return None

    def weights(self, ns: str, name: str) -> dict[str, float]:
        table = self.routing(ns, name) or {"backends": []}
        return {b["name"].split("@")[0]: b["weight"] for b in table["backends"]}

    def mark_ready(self, ns: str, variant: str | None = None) -> None:
        """Act as the kubelet: every replica of the worker Deployments is ready."""
        for v, d in self.workers(ns).items():
            if variant is not None and v != variant:
                continue
            n = d["spec"]["replicas"]
            self.apps.patch_namespaced_deployment_status(
                d["metadata"]["name"],
                ns,
                {"status": {"replicas": n, "readyReplicas": n, "availableReplicas": n}},
            )

    def versions(self, ns: str) -> dict[str, str]:
        """resourceVersion of every object in the namespace (to detect churn)."""
        out = {}
        for kind, items in (
            ("Deployment", self.deployments(ns)),
            ("Service", self.services(ns)),
            ("ConfigMap", self.configmaps(ns)),
        ):
            for o in items:
                out[f"{kind}/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        isvcs = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, "inferenceservices")
        for o in isvcs["items"]:
            if o["metadata"].get("namespace") == ns:
                out[f"InferenceService/{o['metadata']['name']}"] = o["metadata"]["resourceVersion"]
        return out


@pytest.fixture(scope="module")
def operator(
    emulator: EmulatorThread, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    op = Operator(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", {})
    op.start()
    yield op
    op.stop()


@pytest.fixture
def cluster(api: k8s.ApiClient, emulator: EmulatorThread, operator: Operator) -> Iterator[Cluster]:
    c = Cluster(api, emulator)
    yield c
    if operator.proc is None or operator.proc.poll() is not None:
        print(operator.log()[-5000:])


def test_create_makes_workers_router_routing_and_status(cluster: Cluster) -> None:
    ns, pool = "create", "pool-create"
    cluster.create_pool(pool, 2)
    cluster.create(isvc("svc", ns, pool, 40.0))

    workers = wait_for("a worker Deployment", lambda: cluster.workers(ns))
    assert set(workers) == {"big"}
    big = workers["big"]
    assert big["spec"]["replicas"] == 1
    labels = big["metadata"]["labels"]
    assert labels["accordion.dev/service"] == "svc"
    assert labels["accordion.dev/pool"] == pool
    assert labels["app.kubernetes.io/managed-by"] == "accordion-operator"
    owner = cluster.get(ns, "svc")["metadata"]["uid"]
    assert big["metadata"]["ownerReferences"][0]["uid"] == owner
    pod = big["spec"]["template"]["spec"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True

    names = wait_for("the router and worker Services", lambda: len(cluster.services(ns)) == 2)
    assert names
    assert "svc" in {x["metadata"]["name"] for x in cluster.services(ns)}
    assert any(d["metadata"]["name"] == "svc-router" for d in cluster.deployments(ns))
    wait_for("the routing ConfigMap", lambda: cluster.configmaps(ns))
    assert cluster.routing(ns, "svc") is None, "no backend is ready yet"
    conds = wait_for("status conditions", lambda: cluster.conditions(ns, "svc"))
    assert conds["Planned"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"

    cluster.mark_ready(ns)
    wait_for("routing to the ready worker", lambda: cluster.weights(ns, "svc") == {"big": 1.0})
    wait_for("Ready=True", lambda: cluster.conditions(ns, "svc")["Ready"]["status"] == "True")
    status = cluster.status(ns, "svc")
    assert status["observedGeneration"] == 1
    assert status["effectiveAccuracy"] == 80
    assert status["demandQps"] == 40
    assert status["plan"][0]["variant"] == "big"
    assert status["plan"][0]["readyReplicas"] == 1
    assert any(e["reason"] == "ReplicasChanged" for e in cluster.events(ns))
