"""Tenancy on DevicePools: which namespaces may use a pool, and the highest priority they claim.

Planned with the real planner (OR-Tools): a namespace a pool does not admit gets no worker on
it (its other pools stay usable), and a service that may use a pool with `maxPriority` competes
at that priority at most, so `priority: 1000` from any namespace cannot take a shared pool.
"""

from __future__ import annotations

from typing import Any

from accordion.operator.api import DevicePool, InferenceService, parse_resource
from accordion.operator.planning import ServiceMemo, to_problem
from accordion.solver import plan


def pool(name: str, devices: int, **spec: Any) -> DevicePool:
    obj = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "DevicePool",
            "metadata": {"name": name},
            "spec": {"devices": devices, **spec},
        }
    )
    assert isinstance(obj, DevicePool)
    return obj


def service(name: str, ns: str, pools: list[str], qps: float, priority: int) -> InferenceService:
    obj = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "slo": {"latencyMs": 100},
                "demand": {"source": "Static", "qps": qps, "headroom": 0.0},
                "priority": priority,
                "variants": [
                    {
                        "name": "v",
                        "accuracy": 80,
                        "model": {"storageUri": "builtin:demo-s", "format": "builtin"},
                        "profiles": [
                            {"pool": p, "batches": [{"batchSize": 1, "p50Ms": 20}]} for p in pools
                        ],
                    }
                ],
            },
        }
    )
    assert isinstance(obj, InferenceService)
    return obj


def replicas_by_pool(services: list[InferenceService], pools: list[DevicePool]) -> dict[str, Any]:
    build = to_problem(services, pools)
    result = plan(build.problem)
    out: dict[str, dict[str, int]] = {}
    for row in result.rows:
        if row.replicas:
            out.setdefault(row.service, {})[row.pool] = row.replicas
    return out


def test_a_namespace_the_pool_does_not_admit_gets_no_worker_there() -> None:
    shared = pool("shared", 4, allowedNamespaces=["team-a"])
    own = pool("own-b", 1)
    a = service("a", "team-a", ["shared"], 10, 1)
    b = service("b", "team-b", ["shared", "own-b"], 200, 1)
    placed = replicas_by_pool([a, b], [shared, own])
    assert set(placed["team-a/a"]) == {"shared"}
    assert set(placed["team-b/b"]) == {"own-b"}, "b keeps its own pool, loses the shared one"

    build = to_problem([a, b], [shared, own])
    assert build.by_service["team-b/b"] == [
        "team-b/b: DevicePool shared does not admit namespace 'team-b' (allowedNamespaces); "
        "its profiles there are not used"
    ]
    assert "team-a/a" not in build.by_service
    (spec_b,) = [s for s in build.problem.services if s.name == "team-b/b"]
    assert set(spec_b.variants[0].profiles) == {"own-b"}


def test_without_allowed_namespaces_every_namespace_may_use_the_pool() -> None:
    shared = pool("shared", 4)
    b = service("b", "team-b", ["shared"], 30, 1)
    assert replicas_by_pool([b], [shared]) == {"team-b/b": {"shared": 1}}


def test_max_priority_caps_a_claimed_priority_on_a_shared_pool() -> None:
    # One device, which only one of the two services can have. Uncapped, priority 1000 takes
    # it; capped at 1 on the pool, both are planned at priority 1 and the device serves the
    # larger demand (a's 40 req/s against b's 39), as if b had claimed nothing.
    uncapped = pool("shared", 1)
    capped = pool("shared", 1, maxPriority=1)
    a = service("a", "team-a", ["shared"], 40, 5)
    b = service("b", "team-b", ["shared"], 39, 1000)
    assert set(replicas_by_pool([a, b], [uncapped])) == {"team-b/b"}
    assert set(replicas_by_pool([a, b], [capped])) == {"team-a/a"}

    build = to_problem([a, b], [capped])
    priorities = {s.name: s.priority for s in build.problem.services}
    assert priorities == {"team-a/a": 1, "team-b/b": 1}
    assert build.by_service["team-b/b"] == [
        "team-b/b: priority 1000 is planned as 1, the maxPriority of DevicePool shared"
    ]


def test_priority_is_capped_by_the_lowest_max_priority_among_the_pools_it_may_use() -> None:
    pools = [
        pool("p10", 1, maxPriority=10),
        pool("p50", 1, maxPriority=50),
        pool("closed", 1, maxPriority=2, allowedNamespaces=["other"]),
    ]
    svc = service("s", "team", ["p10", "p50", "closed"], 10, 100)
    build = to_problem([svc], pools)
    # `closed` is not usable by the namespace: its cap does not count.
    assert build.problem.services[0].priority == 10
    only_50 = service("s", "team", ["p50"], 10, 100)
    assert to_problem([only_50], pools).problem.services[0].priority == 50
    below = service("s", "team", ["p10"], 10, 3)
    assert to_problem([below], pools).problem.services[0].priority == 3


def test_the_memo_sees_a_change_of_pool_access() -> None:
    memo: ServiceMemo = {}
    svc = service("b", "team-b", ["shared"], 30, 7)
    open_pool = pool("shared", 2)
    first = to_problem([svc], [open_pool], memo=memo)
    assert first.problem.services[0].variants[0].profiles
    closed = pool("shared", 2, allowedNamespaces=["team-a"], maxPriority=3)
    second = to_problem([svc], [closed], memo=memo)
    assert second.problem.services[0].variants[0].profiles == {}
    assert second.problem.services[0].priority == 7, "no usable capped pool: no cap"
    assert "team-b/b" in second.by_service


def test_non_finite_measurements_never_reach_the_planner() -> None:
    svc = service("s", "team", ["p"], 12, 1)
    p = pool("p", 1)
    for bad in (float("inf"), float("nan"), -float("inf")):
        spec = to_problem([svc], [p], measured_qps={svc.key: bad}).problem.services[0]
        assert spec.demand_qps == 12.0, bad
    huge = to_problem([svc], [p], measured_qps={svc.key: 1e300}).problem.services[0]
    assert huge.demand_qps == 1e6
