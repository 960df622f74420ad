"""The operator watching Nodes (`watch_nodes`): a pool is planned with only what its nodes offer.

kmock serves core v1 Nodes (bundled resources); the test acts as the kubelet and registers a
Node. The other emulator tests run with `ACCORDION_WATCH_NODES=0` (they have no Nodes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from accordion.operator.config import OperatorConfig
from accordion.operator.handlers import node_significant

from .conftest import Cluster, EmulatorThread, Operator, device_pool, isvc, wait_for

pytestmark = pytest.mark.timeout(120)

SELECTOR = {"accordion.dev/test-pool": "nodes"}


@pytest.fixture(scope="module")
def operator(
    emulator: EmulatorThread, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    op = Operator(
        kubeconfig,
        tmp_path_factory.mktemp("operator") / "operator.log",
        {"ACCORDION_WATCH_NODES": "1"},
    )
    op.start()
    yield op
    op.stop()


def node(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": dict(SELECTOR)},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_pool_without_nodes_gets_no_workers_until_a_node_registers(cluster: Cluster) -> None:
    ns, pool = "nodes", "pool-nodes"
    body = device_pool(pool, 2)
    body["spec"]["nodeSelector"] = SELECTOR
    cluster.custom.create_cluster_custom_object("accordion.dev", "v1alpha1", "devicepools", body)
    cluster.create(isvc("svc", ns, pool, 40.0))

    conds = wait_for("status conditions", lambda: cluster.conditions(ns, "svc"))
    assert conds["Planned"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "Shortfall"
    assert cluster.status(ns, "svc")["plan"] == []

    def pool_status() -> dict[str, Any]:
        obj = cluster.custom.get_cluster_custom_object(
            "accordion.dev", "v1alpha1", "devicepools", pool
        )
        return dict(obj.get("status") or {})

    status = wait_for("the pool's status", pool_status)
    conds = {c["type"]: c for c in status["conditions"]}
    assert status["matchingNodes"] == 0
    assert status["allocatedDevices"] == 0
    assert conds["NodesMissing"]["status"] == "True"
    assert conds["NodesMissing"]["reason"] == "NoReadyNodes"
    assert conds["Ready"]["status"] == "False"
    # Its workers have no CPU limit: not limited below the two CPUs a CPU worker keeps busy.
    assert (conds["WorkerCpuLimited"]["status"], conds["WorkerCpuLimited"]["reason"]) == (
        "False",
        "NoCpuLimit",
    )
    assert cluster.workers(ns) == {}, "no node offers the pool's devices: nothing to run on"

    cluster.core.create_node(node("gpu-node-1", 2))
    workers = wait_for("a worker once a matching Ready node exists", lambda: cluster.workers(ns))
    assert set(workers) == {"big"}
    # The node's two devices: one for the plan, one for a spare (burst) replica.
    assert workers["big"]["spec"]["replicas"] == 2

    def pool_ready() -> dict[str, Any] | None:
        status = pool_status()
        ready = {c["type"]: c["status"] for c in status.get("conditions") or []}.get("Ready")
        return status if ready == "True" else None

    status = wait_for("the pool Ready", pool_ready)
    assert status["matchingNodes"] == 1
    assert status["allocatedDevices"] == 2


def test_node_relevance_ignores_heartbeats() -> None:
    base = node("n", 2)
    beat = node("n", 2)
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:10Z"
    beat["status"]["conditions"].append({"type": "MemoryPressure", "status": "True"})
    beat["metadata"]["resourceVersion"] = "99"
    assert node_significant(beat) == node_significant(base)
    changes: list[Callable[[dict[str, Any]], None]] = [
        lambda n: n["metadata"]["labels"].update({"x": "y"}),
        lambda n: n["spec"].update({"unschedulable": True}),
        lambda n: n["spec"].update({"taints": [{"key": "k", "effect": "NoSchedule"}]}),
        lambda n: n["status"]["conditions"][0].update({"status": "Unknown"}),
        lambda n: n["status"]["allocatable"].update({"nvidia.com/gpu": "1"}),
    ]
    for change in changes:
        changed = node("n", 2)
        change(changed)
        assert node_significant(changed) != node_significant(base)


def test_watch_nodes_setting() -> None:
    assert OperatorConfig.load({}).watch_nodes is True
    assert OperatorConfig.load({"ACCORDION_WATCH_NODES": "0"}).watch_nodes is False


def test_parse_cache_forgets_deleted_objects() -> None:
    """The driver's parse cache holds only objects still in the watch cache (no slow leak)."""
    from kubernetes import client as k8s

    from accordion.operator.api import InferenceService
    from accordion.operator.handlers import KIND_ISVC, KIND_POOL, Driver

    driver = Driver(config=OperatorConfig(watch_nodes=False), api_client=k8s.ApiClient())
    driver.cache.put(KIND_POOL, device_pool("gpu", 4))
    for name in ("a", "b"):
        driver.cache.put(KIND_ISVC, isvc(name, "default", "gpu", 10.0))
    assert set(driver.world().services) == {"default/a", "default/b"}
    first = driver.world().services["default/a"]
    assert isinstance(first, InferenceService)
    parsed = dict(driver._parsed)
    assert (KIND_ISVC, "default/b") in parsed

    driver.cache.drop(KIND_ISVC, "default", "b")
    world = driver.world()
    assert set(world.services) == {"default/a"}
    assert world.services["default/a"] is first  # still served from the cache
    assert (KIND_ISVC, "default/b") not in driver._parsed
    assert (KIND_ISVC, "default/a") in driver._parsed
