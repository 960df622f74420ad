"""A loop started afresh over a settled cluster (an operator restart) changes nothing, burst
buffer included.

The running Deployments do not say which of their replicas are the plan's and which are spare
(burst) replicas; the services' statuses do (`status.plan[].spareReplicas`). A fresh loop that
took every running replica as planned placed the spare replicas anew on other pools, and
rewrote workers, routing and status of most services (the operator benchmark's restart churn:
one write per service and more).
"""

from __future__ import annotations

from typing import Any

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.control.loop import ControlLoop, DemandView, UpdateStatus, World

from .test_loop import Clock, MemoryActuator, all_ready, pool

POOLS = 5


def spread_service(i: int, profiled: int = 2) -> InferenceService:
    """Service i: one variant, profiled on `profiled` of the pools (ties between placements)."""
    batches = [{"batchSize": 1, "p50Ms": 12.0}, {"batchSize": 8, "p50Ms": 40.0}]
    profiles = [
        {"pool": f"p{(i + k) % POOLS}", "batches": batches} for k in range(0, 2 * profiled, 2)
    ]
    return static_service(i, 50.0 + (i * 37) % 200, [("big", 80, profiles)])


def static_service(
    i: int, qps: float, variants: list[tuple[str, int, list[dict[str, Any]]]]
) -> InferenceService:
    """Service `s{i}` with a static demand of `qps` (the default 10% headroom and burst
    buffer: spare replicas on what the plan leaves idle) and `variants` (name, accuracy,
    profiles)."""
    obj: dict[str, Any] = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": f"s{i}", "namespace": "default", "uid": f"u{i}", "generation": 1},
        "spec": {
            "slo": {"latencyMs": 200},
            "demand": {"source": "Static", "qps": qps, "headroom": 0.1},
            "variants": [
                {
                    "name": name,
                    "accuracy": accuracy,
                    "model": {"storageUri": f"/models/{name}.pt"},
                    "profiles": profiles,
                }
                for name, accuracy, profiles in variants
            ],
        },
    }
    svc = parse_resource(obj)
    assert isinstance(svc, InferenceService)
    return svc


async def test_a_fresh_loop_over_a_settled_cluster_with_spare_replicas_changes_nothing() -> None:
    clock = Clock()
    services = [spread_service(i) for i in range(2 * POOLS)]
    world = World(
        services={s.key: s for s in services},
        pools={f"p{p}": pool(f"p{p}", devices=5) for p in range(POOLS)},
    )
    loop = ControlLoop(clock=clock)
    act = MemoryActuator(world, clock)
    for _ in range(6):
        await loop.reconcile(world, DemandView(), act)
        all_ready(world)
        clock.t += 60.0
    settled = (await loop.reconcile(world, DemandView(), act)).applied
    # Status carries device-seconds and cost, which grow with time: leave it out.
    assert [s for s in settled if not isinstance(s, UpdateStatus)] == []
    assert loop.last_plan is not None
    spare = sum(r.spare_replicas for r in loop.last_plan.rows)
    assert spare >= POOLS, "the case needs a burst buffer to hold"
    running = {k: w.spec.replicas for k, w in world.workers.items()}

    fresh = ControlLoop(clock=clock)
    decision = fresh.decide(world, DemandView())
    assert decision.plan is not None
    assert [
        (r.service, r.variant, r.pool, r.replicas, r.spare_replicas) for r in decision.plan.rows
    ] == [(r.service, r.variant, r.pool, r.replicas, r.spare_replicas) for r in loop.last_plan.rows]
    # No worker or routing write.
    assert [s for s in decision.steps if not isinstance(s, UpdateStatus)] == []
    assert {k: w.spec.replicas for k, w in world.workers.items()} == running
