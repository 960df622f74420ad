"""MIG on nodes, pure (`accordion.operator.mig`): config names, the mig-parted file, the order
of node steps, and which slices count. The kopf operator doing it on kmock is
`test_mig_operator`."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from accordion.operator.api import DevicePool, parse_resource
from accordion.operator.mig import (
    DRAIN_TAINT,
    config_name,
    current_layouts,
    decode_config,
    in_service_layouts,
    mig_parted_config,
    node_actions,
    slice_device_pool,
    slice_devices,
    with_in_service,
)
from accordion.solver import PoolSpec, Problem
from accordion.solver.mig import MigSpec, layout_of, maximal_layouts, valid_layouts
from accordion.solver.plan import GpuLayout, SlicePlacement

SELECTOR = {"pool": "a100"}


def pool() -> DevicePool:
    parsed = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "DevicePool",
            "metadata": {"name": "a100"},
            "spec": {
                "devices": 4,
                "nodeSelector": SELECTOR,
                "resources": {"limits": {"nvidia.com/gpu": 1}, "requests": {"cpu": "2"}},
                "mig": {"gpuModel": "A100-80GB"},
            },
        }
    )
    assert isinstance(parsed, DevicePool)
    return parsed


def node(
    name: str,
    config: str | None = None,
    state: str | None = None,
    slices: dict[str, int] | None = None,
    tainted: bool = False,
) -> dict[str, Any]:
    labels = {**SELECTOR, "nvidia.com/gpu.count": "2"}
    if config:
        labels["nvidia.com/mig.config"] = config
    if state:
        labels["nvidia.com/mig.config.state"] = state
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [{"key": DRAIN_TAINT, "effect": "NoSchedule"}] if tainted else []},
        "status": {
            "allocatable": {f"nvidia.com/mig-{p}": str(n) for p, n in (slices or {}).items()},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def gpu(index: int, **counts: int) -> GpuLayout:
    slices = [
        SlicePlacement(profile=p.replace("_", "."), start=0)
        for p, n in counts.items()
        for _ in range(n)
    ]
    return GpuLayout(pool="a100", gpu=index, layout="x", slices=slices)


def test_config_names_round_trip_for_every_pair_of_layouts() -> None:
    layouts = maximal_layouts("A100-80GB")
    for a in layouts:
        for b in layouts:
            name = config_name("A100-80GB", [a, b])
            assert len(name) <= 63
            assert decode_config("A100-80GB", name, 2) == [a, b], name
    assert config_name("A100-80GB", [layout_of({"1g.10gb": 7})] * 8) == "all-1g.10gb"
    balanced = layout_of({"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1})
    assert config_name("A100-80GB", [balanced, balanced]) == "all-balanced"
    assert config_name("A100-40GB", [layout_of({"1g.10gb": 4})]) == "all-1g.10gb"
    assert decode_config("A100-80GB", "all-1g.10gb", 1) == [layout_of({"1g.10gb": 7})]
    assert decode_config("A100-80GB", "someone-elses", 2) == [None, None]
    assert decode_config("A100-80GB", None, 1) == [None]


def test_eight_gpus_of_distinct_layouts_still_fit_a_label() -> None:
    eight = list(valid_layouts("H100-80GB"))[:8]
    name = config_name("H100-80GB", eight)
    assert len(name) <= 63
    decoded = decode_config("H100-80GB", name, 8)
    assert decoded == eight or decoded == [None] * 8  # hashed: read back as unknown


def test_mig_parted_file_has_per_device_entries() -> None:
    a, b = layout_of({"7g.80gb": 1}), layout_of({"1g.10gb": 7})
    name = config_name("A100-80GB", [a, b])
    doc = json.loads(mig_parted_config({name: ("A100-80GB", (a, b))}))
    assert doc["version"] == "v1"
    assert doc["mig-configs"][name] == [
        {"devices": [0], "mig-enabled": True, "mig-devices": {"7g.80gb": 1}},
        {"devices": [1], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}},
    ]
    assert doc["mig-configs"]["all-disabled"] == [{"devices": "all", "mig-enabled": False}]


def test_slice_workers_ask_a_slice_not_a_gpu() -> None:
    sliced = slice_device_pool({"a100": pool()}, "a100/3g.40gb")
    assert sliced is not None
    assert sliced.spec.resources.limits == {"nvidia.com/mig-3g.40gb": 1}
    assert sliced.spec.resources.requests == {"cpu": "2"}
    assert sliced.spec.node_selector == SELECTOR
    assert slice_device_pool({"a100": pool()}, "a100/9g.99gb") is None
    assert slice_device_pool({"a100": pool()}, "a100") is None


def worker(name: str, node_name: str, profile: str | None = None) -> dict[str, Any]:
    """A worker pod bound to `node_name`, asking one slice of `profile` (None: no slice)."""
    limits = {f"nvidia.com/mig-{profile}": 1} if profile else {}
    spec = {"nodeName": node_name, "containers": [{"resources": {"limits": limits}}]}
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec}


def test_nodes_change_one_at_a_time_drained_before_relabelled() -> None:
    pools = {"a100": pool()}
    nodes = [node("n1", "all-7g.80gb", "success"), node("n2", "all-7g.80gb", "success")]
    assert current_layouts(pools.values(), nodes) == {"a100": [{"7g.80gb": 1}] * 4}
    plan = [gpu(i, **{"1g_10gb": 7}) for i in range(4)]
    # n2's worker has no free slice to go to: n2 waits for n1 (no slack).
    on_n2 = [worker("w2", "n2", "7g.80gb")]
    pods = [{"metadata": {"name": "w1", "namespace": "ns"}, "spec": {"nodeName": "n1"}}, *on_n2]

    actions, configs = node_actions(pools, nodes, plan, pods)
    assert [(a.node, a.kind) for a in actions] == [("n1", "drain")]  # not n2 as well
    assert set(configs) == {"all-7g.80gb", "all-1g.10gb"}

    nodes[0] = node("n1", "all-7g.80gb", "success", tainted=True)
    actions, _ = node_actions(pools, nodes, plan, pods)
    assert [(a.node, a.kind, a.pods) for a in actions] == [("n1", "evict", (("ns", "w1"),))]

    terminating = [
        {**pods[0], "metadata": {**pods[0]["metadata"], "deletionTimestamp": "t"}},
        *on_n2,
    ]
    assert node_actions(pools, nodes, plan, terminating)[0] == []  # it still holds its slice
    actions, _ = node_actions(pools, nodes, plan, on_n2)
    assert [(a.node, a.kind, a.config) for a in actions] == [("n1", "relabel", "all-1g.10gb")]

    nodes[0] = node("n1", "all-1g.10gb", "pending", tainted=True)
    assert node_actions(pools, nodes, plan, on_n2)[0] == []  # n2 waits for n1
    nodes[0] = node("n1", "all-1g.10gb", "success", {"1g.10gb": 14}, tainted=True)
    actions, _ = node_actions(pools, nodes, plan, on_n2)
    assert [(a.node, a.kind) for a in actions] == [("n1", "release")]
    assert slice_devices(pools, nodes, plan)["a100/1g.10gb"] == 0  # still tainted

    nodes[0] = node("n1", "all-1g.10gb", "success", {"1g.10gb": 14})
    actions, _ = node_actions(pools, nodes, plan, on_n2)
    assert [(a.node, a.kind) for a in actions] == [("n2", "drain")]
    assert slice_devices(pools, nodes, plan)["a100/1g.10gb"] == 14


def test_nodes_whose_workers_have_free_slices_elsewhere_change_together() -> None:
    pools = {"a100": pool()}
    # n1 and n2 change; n3 keeps its planned config and has two free 7g slices.
    nodes = [
        node("n1", "all-7g.80gb", "success", {"7g.80gb": 2}),
        node("n2", "all-7g.80gb", "success", {"7g.80gb": 2}),
        node("n3", "all-7g.80gb", "success", {"7g.80gb": 2}),
    ]
    plan = [gpu(i, **{"1g_10gb": 7}) for i in range(4)] + [gpu(i, **{"7g_80gb": 1}) for i in (4, 5)]
    pods = [worker("w1", "n1", "7g.80gb"), worker("w2", "n2", "7g.80gb")]
    actions, _ = node_actions(pools, nodes, plan, pods)
    assert [(a.node, a.kind) for a in actions] == [("n1", "drain"), ("n2", "drain")]

    # One of n3's slices is taken: n1's worker claims the other, n2's has nowhere to go.
    busy_n3 = [*pods, worker("w3", "n3", "7g.80gb")]
    actions, _ = node_actions(pools, nodes, plan, busy_n3)
    assert [(a.node, a.kind) for a in actions] == [("n1", "drain")]

    # n1 is out; n2 may join it only while its worker has a free slice on n3.
    nodes[0] = node("n1", "all-1g.10gb", "pending", tainted=True)
    actions, _ = node_actions(pools, nodes, plan, [pods[1], worker("w3", "n3", "7g.80gb")])
    assert [(a.node, a.kind) for a in actions] == [("n2", "drain")]
    two_on_n3 = [pods[1], worker("w3", "n3", "7g.80gb"), worker("w4", "n3", "7g.80gb")]
    assert node_actions(pools, nodes, plan, two_on_n3)[0] == []
    # A worker whose slice is not known never counts as movable.
    assert node_actions(pools, nodes, plan, [worker("w2", "n2")])[0] == []


def test_slices_count_for_the_config_a_node_has_and_what_is_allocatable() -> None:
    pools = {"a100": pool()}
    plan = [gpu(0, **{"3g_40gb": 2}), gpu(1, **{"3g_40gb": 2})]
    # The MIG manager says success for the old config: its slices serve until the node's turn
    # to be relabelled, the planned ones do not exist yet.
    stale = [node("n1", "all-7g.80gb", "success", {"3g.40gb": 4, "7g.80gb": 2})]
    assert slice_devices(pools, stale, plan)["a100/3g.40gb"] == 0
    assert slice_devices(pools, stale, plan)["a100/7g.80gb"] == 2
    drained = [{**stale[0], "spec": node("n1", tainted=True)["spec"]}]
    assert slice_devices(pools, drained, plan)["a100/7g.80gb"] == 0
    # The planned config, but the device plugin shows only 3 slices so far.
    partial = [node("n1", "all-3g.40gb", "success", {"3g.40gb": 3, "7g.80gb": 1})]
    assert slice_devices(pools, partial, plan) == {
        "a100/1g.10gb": 0,
        "a100/1g.20gb": 0,
        "a100/2g.20gb": 0,
        "a100/3g.40gb": 3,
        "a100/4g.40gb": 0,
        "a100/7g.80gb": 0,
    }
    failed = [node("n1", "all-3g.40gb", "failed", {"3g.40gb": 4})]
    assert slice_devices(pools, failed, plan)["a100/3g.40gb"] == 0


def test_gpus_in_service_for_the_planner() -> None:
    """What the planner may place replicas on (`MigSpec.in_service`): a node in service at its
    config's layouts, nothing on one drained or being relabelled, unknown on one the MIG
    manager never configured (the plan's layout is taken as applied)."""
    nodes = [
        node("n1", "all-7g.80gb", "success", {"7g.80gb": 2}),
        node("n2", "all-7g.80gb", "success", {"7g.80gb": 2}, tainted=True),
        node("n3", "all-1g.10gb", "pending", tainted=True),
        node("n4"),
    ]
    assert in_service_layouts([pool()], nodes) == {
        "a100": [{"7g.80gb": 1}] * 2 + [{}] * 4 + [None] * 2
    }


def test_targets_for_the_planner_are_the_plan_in_force() -> None:
    """The control loop's hook gives the planner, per GPU, the layout the plan in force gives
    it (`MigSpec.target`, the reference of the layout hysteresis): a drain under way toward
    it is not cancelled for a small gain. GPUs the plan leaves out have none; without a plan
    in force there is no target."""
    nodes = [
        node("n1", "all-7g.80gb", "success", {"7g.80gb": 2}),
        node("n2", "all-7g.80gb", "success", {"7g.80gb": 2}, tainted=True),
    ]
    problem = Problem(
        pools=[PoolSpec(name="a100", devices=4, mig=MigSpec(gpu_model="A100-80GB"))],
        services=[],
    )
    in_force = SimpleNamespace(layouts=[gpu(0, **{"7g_80gb": 1}), gpu(2, **{"1g_10gb": 7})])
    mig = with_in_service(problem, [pool()], nodes, in_force).pools[0].mig
    assert mig is not None
    assert mig.target == [{"7g.80gb": 1}, None, {"1g.10gb": 7}, None]
    assert mig.in_service == [{"7g.80gb": 1}] * 2 + [{}] * 2
    bare = with_in_service(problem, [pool()], nodes).pools[0].mig
    assert bare is not None
    assert bare.target is None
