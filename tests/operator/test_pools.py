"""Pools: what the nodes really offer a DevicePool, its conditions, and the planner's cap."""

from __future__ import annotations

from typing import Any

import pytest

from accordion.operator.api import DevicePool, InferenceService
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.planning import to_problem
from accordion.operator.pools import (
    available_devices,
    cpu_condition,
    device_resource,
    parse_quantity,
    pod_tolerations,
    pool_capacity,
    worker_cpu_limit,
)

GPU = "nvidia.com/gpu"


def pool(
    name: str = "a100",
    devices: int = 4,
    selector: dict[str, str] | None = None,
    limits: dict[str, Any] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> DevicePool:
    return DevicePool.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "devices": devices,
                "nodeSelector": {"gpu": "a100"} if selector is None else selector,
                "resources": {"limits": {GPU: 1} if limits is None else limits},
                "tolerations": tolerations or [],
            },
        }
    )


def node(
    name: str,
    labels: dict[str, str] | None = None,
    gpus: str | None = "2",
    ready: str = "True",
    unschedulable: bool = False,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    allocatable = {"cpu": "16", "memory": "64Gi"}
    if gpus is not None:
        allocatable[GPU] = gpus
    spec: dict[str, Any] = {"unschedulable": True} if unschedulable else {}
    if taints is not None:
        spec["taints"] = taints
    return {
        "metadata": {"name": name, "labels": {"gpu": "a100"} if labels is None else labels},
        "spec": spec,
        "status": {
            "allocatable": allocatable,
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready},
            ],
        },
    }


def conds(p: DevicePool, nodes: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in pool_capacity(p, nodes).conditions()}


def test_no_matching_node_is_nodes_missing_with_zero_devices() -> None:
    nodes = [node("n1", labels={"gpu": "h100"}), node("n2", labels={})]
    cap = pool_capacity(pool(), nodes)
    assert (cap.matching_nodes, cap.ready_nodes, cap.available, cap.missing) == (0, [], 0, 4)
    c = conds(pool(), nodes)
    assert c["NodesMissing"][:2] == ("True", "NoReadyNodes")
    assert c["Ready"][0] == "False"
    assert "no node matches" in c["NodesMissing"][2]
    assert "0 of 4 devices" in c["NodesMissing"][2]


def test_unschedulable_and_not_ready_nodes_are_excluded() -> None:
    nodes = [
        node("cordoned", unschedulable=True),
        node("down", ready="False"),
        node("unknown", ready="Unknown"),
        {"metadata": {"name": "bare", "labels": {"gpu": "a100"}}},  # no status at all
    ]
    cap = pool_capacity(pool(), nodes)
    assert cap.matching_nodes == 4
    assert cap.ready_nodes == []
    assert cap.available == 0
    c = conds(pool(), nodes)
    assert c["NodesMissing"][0] == "True"
    assert "none of the 4 matching nodes" in c["NodesMissing"][2]
    # One good node among them: only its 2 GPUs count.
    cap = pool_capacity(pool(), [*nodes, node("ok")])
    assert (cap.ready_nodes, cap.allocatable, cap.available) == (["ok"], 2, 2)


def test_allocatable_below_declared_is_capped_and_says_by_how_much() -> None:
    # 2 + 1 GPUs on ready nodes (the cordoned node's 8 do not count); the pool declares 4.
    nodes = [node("n1", gpus="2"), node("n2", gpus="1"), node("n3", gpus="8", unschedulable=True)]
    cap = pool_capacity(pool(devices=4), nodes)
    assert (cap.resource, cap.allocatable, cap.available, cap.missing) == (GPU, 3, 3, 1)
    status, reason, message = conds(pool(devices=4), nodes)["NodesMissing"]
    assert (status, reason) == ("True", "NotEnoughDevices")
    assert "3 of 4 devices available (1 missing)" in message
    assert conds(pool(devices=4), nodes)["Ready"][0] == "False"


def test_two_gpus_per_replica_count_whole_replicas_only() -> None:
    p = pool(devices=4, limits={GPU: 2, "cpu": "4"})
    assert device_resource(p) == (GPU, 2.0)
    cap = pool_capacity(p, [node("n1", gpus="3"), node("n2", gpus="4")])
    assert (cap.allocatable, cap.available) == (3, 3)  # 1 + 2 replicas


def test_enough_devices_is_ready() -> None:
    nodes = [node("n1", gpus="4"), node("n2", gpus="4"), node("other", labels={"x": "y"})]
    p = pool(devices=6)
    cap = pool_capacity(p, nodes)
    assert (cap.matching_nodes, cap.allocatable, cap.available, cap.missing) == (2, 8, 6, 0)
    c = conds(p, nodes)
    assert c["NodesMissing"][:2] == ("False", "AllDevicesAvailable")
    assert c["Ready"][:2] == ("True", "AllDevicesAvailable")
    status = cap.status(allocated_devices=5, generation=3)
    assert (status.matching_nodes, status.allocated_devices) == (2, 5)
    assert [c.observed_generation for c in status.conditions] == [3, 3]


def test_pool_without_a_device_resource_counts_ready_nodes_only() -> None:
    p = pool(devices=5, selector={"role": "cpu"}, limits={"cpu": "2", "memory": "4Gi"})
    assert device_resource(p) is None
    assert pool_capacity(p, [node("c1", labels={"role": "cpu"}, gpus=None)]).available == 5
    assert pool_capacity(p, [node("c1", labels={"role": "cpu"}, ready="False")]).available == 0


def test_empty_selector_matches_every_node() -> None:
    cap = pool_capacity(pool(devices=10, selector={}), [node("a", labels={}), node("b")])
    assert (cap.matching_nodes, cap.available) == (2, 4)


@pytest.mark.parametrize(
    ("raw", "value"), [(4, 4.0), ("8", 8.0), ("500m", 0.5), ("1Ki", 1024.0), ("1.5", 1.5)]
)
def test_parse_quantity(raw: int | str, value: float) -> None:
    assert parse_quantity(raw) == value


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("lots")


def test_planner_gets_the_capped_count() -> None:
    pools = [pool("a100", devices=4), pool("t4", devices=3, selector={"gpu": "t4"})]
    nodes = [node("n1", gpus="2"), node("n2", gpus="8", ready="False")]
    available = available_devices(pools, nodes)
    assert available == {"a100": 2, "t4": 0}
    problem = to_problem([], pools, available_devices=available).problem
    assert {p.name: p.devices for p in problem.pools} == {"a100": 2, "t4": 0}
    # Without the input, or for a pool it does not name, the declared count stands.
    assert {p.name: p.devices for p in to_problem([], pools).problem.pools} == {
        "a100": 4,
        "t4": 3,
    }
    partial = to_problem([], pools, available_devices={"t4": 99}).problem
    assert {p.name: p.devices for p in partial.pools} == {"a100": 4, "t4": 3}


def gpu_service() -> InferenceService:
    return InferenceService.model_validate(
        {
            "metadata": {"name": "svc", "namespace": "default", "generation": 1},
            "spec": {
                "slo": {"latencyMs": 100},
                "demand": {"source": "Static", "qps": 40.0, "headroom": 0.0},
                "variants": [
                    {
                        "name": "big",
                        "accuracy": 80,
                        "model": {"storageUri": "/models/big.pt"},
                        "profiles": [{"pool": "a100", "batches": [{"batchSize": 1, "p50Ms": 20}]}],
                    }
                ],
            },
        }
    )


def test_loop_caps_pools_only_when_the_world_has_nodes() -> None:
    pools = {"a100": pool(devices=4)}
    svc = {"default/svc": gpu_service()}
    # No node list (the driver does not watch Nodes): the declared 4 devices are planned on.
    loop = ControlLoop()
    plan, _, _ = loop.make_plan(World(services=dict(svc), pools=pools), DemandView())
    assert loop.last_problem is not None
    assert [p.devices for p in loop.last_problem.pools] == [4]
    assert sum(r.replicas for r in plan.rows) > 0
    # Nodes known, one ready node with 1 GPU: the planner gets 1 device.
    loop = ControlLoop()
    world = World(services=dict(svc), pools=pools, nodes=[node("n1", gpus="1")])
    plan, _, _ = loop.make_plan(world, DemandView())
    assert loop.last_problem is not None
    assert [p.devices for p in loop.last_problem.pools] == [1]
    assert sum(r.replicas for r in plan.rows if r.pool == "a100") <= 1
    # Nodes known, none matching: nothing can be placed.
    loop = ControlLoop()
    world = World(services=dict(svc), pools=pools, nodes=[node("x", labels={})])
    plan, _, _ = loop.make_plan(world, DemandView())
    assert loop.last_problem is not None
    assert [p.devices for p in loop.last_problem.pools] == [0]
    assert sum(r.replicas for r in plan.rows) == 0


# -- taints and tolerations -------------------------------------------------------------------

DEDICATED = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}


def taint(key: str, value: str = "", effect: str = "NoSchedule") -> dict[str, str]:
    out = {"key": key, "effect": effect}
    if value:
        out["value"] = value
    return out


def counted(p: DevicePool, *nodes: dict[str, Any]) -> list[str]:
    return pool_capacity(p, list(nodes)).ready_nodes


def test_a_node_with_a_taint_the_pool_does_not_tolerate_does_not_count() -> None:
    nodes = [node("tainted", taints=[DEDICATED]), node("clean"), node("empty-taints", taints=[])]
    cap = pool_capacity(pool(devices=8), nodes)
    assert cap.matching_nodes == 3
    assert cap.ready_nodes == ["clean", "empty-taints"]
    assert cap.available == 4  # the tainted node's 2 GPUs do not count
    only = pool_capacity(pool(), [node("tainted", taints=[DEDICATED])])
    assert (only.ready_nodes, only.available) == ([], 0)
    c = conds(pool(), [node("tainted", taints=[DEDICATED])])
    assert c["NodesMissing"][:2] == ("True", "NoReadyNodes")
    assert "none of the 1 matching nodes" in c["NodesMissing"][2]


@pytest.mark.parametrize(
    ("toleration", "tolerated"),
    [
        ({"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}, True),
        ({"key": "dedicated", "value": "ml"}, True),  # operator Equal by default; any effect
        ({"key": "dedicated", "operator": "Exists"}, True),
        ({"operator": "Exists"}, True),  # empty key with Exists: every taint
        ({"key": "dedicated", "operator": "Equal", "value": "web"}, False),  # other value
        ({"key": "dedicated"}, False),  # Equal with no value: the taint's value must be empty
        ({"key": "other", "operator": "Exists"}, False),  # other key
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),  # effect
    ],
)
def test_toleration_matching_is_the_schedulers(toleration: dict[str, Any], tolerated: bool) -> None:
    p = pool(tolerations=[toleration])
    assert bool(counted(p, node("n", taints=[DEDICATED]))) is tolerated


def test_every_blocking_taint_must_be_tolerated_and_prefer_no_schedule_is_ignored() -> None:
    both = [DEDICATED, taint("maintenance", effect="NoExecute")]
    one = pool(tolerations=[{"key": "dedicated", "operator": "Exists"}])
    assert counted(one, node("n", taints=both)) == []
    two = pool(
        tolerations=[
            {"key": "dedicated", "operator": "Exists"},
            {"key": "maintenance", "operator": "Exists", "effect": "NoExecute"},
        ]
    )
    assert counted(two, node("n", taints=both)) == ["n"]
    soft = [taint("spot", "true", effect="PreferNoSchedule")]
    assert counted(pool(), node("n", taints=soft)) == ["n"]


def test_an_extended_resource_taint_is_tolerated_as_the_admission_plugin_does() -> None:
    """ExtendedResourceToleration (GKE, AKS) lets pods that request nvidia.com/gpu onto nodes
    tainted `nvidia.com/gpu:NoSchedule`; a CPU pool's pods get no such toleration."""
    gpu_taint = taint(GPU, "present")
    assert counted(pool(), node("gpu", taints=[gpu_taint])) == ["gpu"]
    assert [t.key for t in pod_tolerations(pool())] == [GPU]
    assert counted(pool(), node("gpu", taints=[taint(GPU, effect="NoExecute")])) == []
    cpu = pool(selector={}, limits={"cpu": "2", "memory": "4Gi"})
    assert pod_tolerations(cpu) == []
    assert counted(cpu, node("gpu", taints=[gpu_taint])) == []
    assert counted(cpu, node("cpu")) == ["cpu"]


def test_the_planner_gets_only_the_tolerated_nodes_devices() -> None:
    pools = [
        pool("a100", devices=8),
        pool("ml", devices=8, tolerations=[{"key": "dedicated", "operator": "Exists"}]),
    ]
    nodes = [node("n1", gpus="2"), node("n2", gpus="4", taints=[DEDICATED])]
    assert available_devices(pools, nodes) == {"a100": 2, "ml": 6}


def cpu_pool(limits: dict[str, Any], device: str = "cpu") -> DevicePool:
    return DevicePool.model_validate(
        {
            "metadata": {"name": "cpu"},
            "spec": {"devices": 4, "device": device, "resources": {"limits": limits}},
        }
    )


def test_a_cpu_worker_limited_below_two_cpus_is_said() -> None:
    one = cpu_condition(cpu_pool({"cpu": "1", "memory": "4Gi"}), generation=2)
    assert (one.type, one.status, one.reason) == ("WorkerCpuLimited", "True", "CpuLimitBelowTwo")
    assert "limited to 1 CPU" in one.message
    assert "at least 2 CPUs" in one.message
    assert one.observed_generation == 2
    assert cpu_condition(cpu_pool({"cpu": "1500m"})).status == "True"
    # Two CPUs, none at all, or a GPU pool (its model thread mostly waits for the GPU): fine.
    assert cpu_condition(cpu_pool({"cpu": "2"})).reason == "CpuLimitSufficient"
    assert cpu_condition(cpu_pool({"memory": "4Gi"})).reason == "NoCpuLimit"
    gpu = cpu_condition(cpu_pool({"cpu": "1", GPU: 1}, device="cuda"))
    assert (gpu.status, gpu.reason) == ("False", "NotACpuPool")
    assert worker_cpu_limit(cpu_pool({"cpu": "500m"})) == 0.5
