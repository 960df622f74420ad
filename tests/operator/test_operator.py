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


def request_log(cluster: Cluster) -> list[tuple[str, str]]:
    """(method, path) of every request the emulator served, in order."""
    return cluster.emulator.call(lambda emu: list(emu.log))


def test_demand_change_switches_variant_make_before_break(cluster: Cluster) -> None:
    ns, pool = "switch", "pool-switch"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 40.0))
    wait_for("the big worker", lambda: "big" in cluster.workers(ns))
    cluster.mark_ready(ns)
    wait_for("routing to big", lambda: cluster.weights(ns, "svc") == {"big": 1.0})

    # 150 req/s: one device of big serves 45; small serves 180.
    cluster.patch(ns, "svc", {"spec": {"demand": {"qps": 150.0}}})
    wait_for("the small worker", lambda: "small" in cluster.workers(ns))
    assert "big" in cluster.workers(ns), "the old variant runs until the new one is ready"
    assert cluster.weights(ns, "svc") == {"big": 1.0}, "no traffic to replicas that are not ready"
    wait_for(
        "status for the new plan", lambda: cluster.status(ns, "svc").get("effectiveAccuracy") == 70
    )
    assert cluster.conditions(ns, "svc")["Ready"]["status"] == "False"

    cluster.mark_ready(ns, "small")
    wait_for("the big worker removed", lambda: set(cluster.workers(ns)) == {"small"})
    assert cluster.weights(ns, "svc") == {"small": 1.0}
    wait_for("Ready", lambda: cluster.conditions(ns, "svc")["Ready"]["status"] == "True")
    # Make before break: traffic moved (routing ConfigMap patched) before big was deleted.
    log = request_log(cluster)
    routing_patches = [
        i for i, (m, p) in enumerate(log) if m == "PATCH" and p.endswith("/svc-routing")
    ]
    deletes = [
        i
        for i, (m, p) in enumerate(log)
        if m == "DELETE" and f"/namespaces/{ns}/deployments/svc-big-" in p
    ]
    assert deletes, "the big worker Deployment was deleted"
    assert routing_patches[-1] < deletes[0]
    reasons = {e["reason"] for e in cluster.events(ns)}
    assert "AccuracyScaledDown" in reasons


def test_pool_shrink_replans(cluster: Cluster) -> None:
    ns, pool = "shrink", "pool-shrink"
    cluster.create_pool(pool, 4)
    cluster.create(isvc("svc", ns, pool, 120.0))
    wait_for(
        "three big replicas",
        lambda: cluster.workers(ns).get("big", {}).get("spec", {}).get("replicas") == 3,
    )
    cluster.mark_ready(ns)
    cluster.patch_pool(pool, 1)
    wait_for("the small worker", lambda: "small" in cluster.workers(ns))
    cluster.mark_ready(ns, "small")
    wait_for("only small remains", lambda: set(cluster.workers(ns)) == {"small"})
    assert cluster.workers(ns)["small"]["spec"]["replicas"] == 1


def test_delete_removes_everything_owned(cluster: Cluster) -> None:
    ns, pool = "delete", "pool-delete"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 10.0))
    wait_for("the worker", lambda: cluster.workers(ns))
    wait_for("the routing ConfigMap", lambda: cluster.configmaps(ns))
    cluster.delete(ns, "svc")
    wait_for(
        "everything gone",
        lambda: (
            not cluster.deployments(ns) and not cluster.services(ns) and not cluster.configmaps(ns)
        ),
    )


def test_invalid_spec_is_isolated(cluster: Cluster) -> None:
    ns, pool = "invalid", "pool-invalid"
    cluster.create_pool(pool, 2)
    bad = isvc("bad", ns, pool, 10.0)
    bad["spec"]["variants"][0]["accuracy"] = 150  # the CRD schema would reject it; no emulator
    cluster.create(bad)
    cluster.create(isvc("good", ns, pool, 10.0))
    conds = wait_for("InvalidSpec on bad", lambda: cluster.conditions(ns, "bad"))
    assert conds["InvalidSpec"]["status"] == "True"
    assert "spec.variants[0].accuracy" in conds["InvalidSpec"]["message"]
    wait_for("good is served", lambda: cluster.workers(ns))
    assert {d["metadata"]["labels"]["accordion.dev/service"] for d in cluster.deployments(ns)} == {
        "good"
    }
    # Fixing the spec brings it in.
    cluster.patch(
        ns, "bad", {"spec": {"variants": isvc("bad", ns, pool, 10.0)["spec"]["variants"]}}
    )
    wait_for(
        "bad is planned",
        lambda: cluster.conditions(ns, "bad").get("InvalidSpec", {}).get("status") == "False",
    )


def test_api_errors_are_retried(cluster: Cluster) -> None:
    ns, pool = "faults", "pool-faults"
    emu = cluster.emulator
    emu.call(lambda e: e.inject("POST", "deployments", 500, times=2))
    emu.call(lambda e: e.inject("PATCH", "inferenceservices", 409, times=1))
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 10.0))
    wait_for("the worker despite 500s", lambda: cluster.workers(ns))
    wait_for("the status despite a 409", lambda: cluster.conditions(ns, "svc"))
    served = emu.call(lambda e: list(e.faults_served))
    assert ("POST", "deployments", 500) in served
    assert ("PATCH", "inferenceservices", 409) in served


def test_restart_makes_no_changes(cluster: Cluster, operator: Operator) -> None:
    ns, pool = "restart", "pool-restart"
    cluster.create_pool(pool, 2)
    cluster.create(isvc("svc", ns, pool, 40.0))
    wait_for("the worker", lambda: cluster.workers(ns))
    cluster.mark_ready(ns)
    wait_for(
        "Ready", lambda: cluster.conditions(ns, "svc").get("Ready", {}).get("status") == "True"
    )
    before = cluster.versions(ns)
    operator.stop()
    operator.start()
    # A canary proves the restarted operator has reconciled the whole cluster (one global pass).
    cluster.create_pool("pool-canary", 1)
    cluster.create(isvc("canary", "canary", "pool-canary", 10.0))
    wait_for("the canary's worker", lambda: cluster.workers("canary"), timeout_s=60)
    assert cluster.versions(ns) == before
