"""The operator's metrics follow the control loop: what it planned, what is ready, and when.

Driven by the real pure control loop over the example manifests, with an in-memory actuator;
the values are read back from the registry the operator serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accordion.operator import metrics
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.manifests import load

from .test_loop import Clock, MemoryActuator, all_ready

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def replicas(service: str, state: str) -> list[Any]:
    """The `accordion_service_replicas` samples of a service in a state (planned, ready)."""
    return [
        s
        for fam in metrics.REGISTRY.collect()
        if fam.name == "accordion_service_replicas"
        for s in fam.samples
        if s.labels["service"] == service and s.labels["state"] == state
    ]


def example_loop() -> tuple[World, ControlLoop, MemoryActuator]:
    """The example cluster's world, a control loop and an in-memory actuator on one clock."""
    manifests = load([EXAMPLES])
    world = World(
        services={s.key: s for s in manifests.services},
        pools={p.metadata.name: p for p in manifests.pools},
    )
    clock = Clock()
    return world, ControlLoop(clock=clock), MemoryActuator(world, clock)


async def test_metrics_follow_the_loop() -> None:
    world, loop, actuator = example_loop()
    recorder = metrics.OperatorMetrics()
    before_ok = sample("accordion_operator_reconciles_total", result="ok") or 0.0
    svc = {"namespace": "default", "service": "image-classifier"}
    changes_before = sample("accordion_operator_plan_changes_total", **svc) or 0.0
    demand = DemandView(qps={"default/image-classifier": 250.0})

    result = await loop.reconcile(world, demand, actuator)
    recorder.record(world, demand, result, loop.plan_time_s)

    assert sample("accordion_operator_reconciles_total", result="ok") == before_ok + 1
    assert sample("accordion_operator_last_reconcile_timestamp_seconds") is not None
    assert sample("accordion_service_slo_latency_seconds", **svc) == pytest.approx(0.1)
    assert sample("accordion_service_accuracy_floor", **svc) == pytest.approx(0.69)
    assert sample("accordion_service_accuracy_target", **svc) is None  # unset in the example
    assert sample("accordion_service_demand_requests_per_second", **svc) == 250.0
    capacity = sample("accordion_service_capacity_requests_per_second", **svc)
    assert capacity is not None
    assert capacity >= 250.0
    accuracy = sample("accordion_service_planned_accuracy", **svc)
    assert accuracy is not None
    assert 0.69 <= accuracy <= 0.783 + 1e-9
    assert sample("accordion_operator_plan_changes_total", **svc) == changes_before + 1
    planned = replicas("image-classifier", "planned")
    assert planned
    assert sum(s.value for s in planned) >= 1
    ready_cond = sample("accordion_service_condition", **svc, condition="Ready")
    assert ready_cond == 0  # nothing is ready yet

    # Replicas become ready; the next pass reports them and no plan change.
    all_ready(world)
    result = await loop.reconcile(world, demand, actuator)
    recorder.record(world, demand, result, loop.plan_time_s)
    ready = replicas("image-classifier", "ready")
    assert sum(s.value for s in ready) == sum(s.value for s in planned)
    assert sample("accordion_operator_plan_changes_total", **svc) == changes_before + 1
    assert sample("accordion_service_condition", **svc, condition="Ready") == 1

    recorder.record_error()
    assert sample("accordion_operator_reconciles_total", result="error") is not None


async def test_a_removed_service_leaves_no_series_behind() -> None:
    """Each pass replaces the per-service series (a collector of the pass's samples)."""
    world, loop, actuator = example_loop()
    recorder = metrics.OperatorMetrics()
    gone = {"namespace": "default", "service": "image-classifier"}
    result = await loop.reconcile(world, DemandView(), actuator)
    recorder.record(world, DemandView(), result, loop.plan_time_s)
    assert sample("accordion_service_slo_latency_seconds", **gone) is not None
    assert any(
        s.labels["service"] == "image-classifier"
        for fam in metrics.REGISTRY.collect()
        if fam.name == "accordion_service_replicas"
        for s in fam.samples
    )

    del world.services["default/image-classifier"]  # deleted: its status goes with it
    world.status.pop("default/image-classifier", None)
    result = await loop.reconcile(world, DemandView(), actuator)
    recorder.record(world, DemandView(), result, loop.plan_time_s)
    assert sample("accordion_service_slo_latency_seconds", **gone) is None
    assert sample("accordion_service_condition", **gone, condition="Ready") is None
    left = {
        s.labels["service"]
        for fam in metrics.REGISTRY.collect()
        if fam.name.startswith("accordion_service_")
        for s in fam.samples
    }
    assert left
    assert "image-classifier" not in left


async def test_plans_held_back_are_counted_by_reason() -> None:
    """A re-plan whose swaps wait for the rise to last a start-up counts as held back
    (`accordion_operator_plans_held_total`); both reasons are there from the start, at 0."""
    from .test_swaps import SVC, step, warm

    held = "accordion_operator_plans_held_total"
    young, unpaid = "rise_younger_than_startup", "swaps_not_paid_back"
    world, clock, loop, act = await warm(devices=2)
    recorder = metrics.OperatorMetrics()
    result = await loop.reconcile(world, DemandView(qps={SVC: 80.0}), act)
    recorder.record(world, DemandView(), result, loop.plan_time_s, held=loop.swap_gate.held())
    assert sample(held, reason=young) == 0
    assert sample(held, reason=unpaid) == 0
    # 150 req/s needs the fast variant on a full pool: a swap, held while the rise is young.
    clock.t += 1.0
    assert await step(loop, world, act, 150.0) == []
    result = await loop.reconcile(world, DemandView(qps={SVC: 150.0}), act)
    recorder.record(world, DemandView(), result, loop.plan_time_s, held=loop.swap_gate.held())
    assert sample(held, reason=young) == loop.swap_gate.deferred >= 1
    assert sample(held, reason=unpaid) == 0
