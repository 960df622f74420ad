"""The pure control loop (no kopf, no Kubernetes): plan, desired state, make-before-break steps.

The planner is the real one (OR-Tools); the actuator is an in-memory world that applies the
steps as a driver would, with readiness under the test's control (as a kubelet would report it).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from accordion.operator.api import DevicePool, InferenceService, parse_resource
from accordion.operator.control.desired import WorkerKey, WorkerSpec, routing_table, service_routing
from accordion.operator.control.loop import (
    MIN_SETTLE_S,
    AppliedRouting,
    ApplyRouting,
    ControlLoop,
    DemandView,
    EnsureWorker,
    LoopSettings,
    RecordEvent,
    RemoveService,
    RemoveWorker,
    RunningWorker,
    Step,
    UpdateStatus,
    World,
    default_planner,
)
from accordion.operator.manifests import load
from accordion.solver import Plan, PlanRow, Problem
from accordion.workers.fastloop import RoutingDecider


def service(name: str = "svc", qps: float = 40.0, **spec: Any) -> InferenceService:
    obj = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "slo": {"latencyMs": 100},
            # The burst buffer has tests of its own: here every device is the plan's.
            "demand": {
                "source": "Static",
                "qps": qps,
                "headroom": 0.0,
                "burst": {"policy": "Off"},
            },
            "variants": [
                {
                    "name": "big",
                    "accuracy": 80,
                    "model": {"storageUri": "/models/big.pt"},
                    "profiles": [{"pool": "gpu", "batches": [{"batchSize": 1, "p50Ms": 20}]}],
                },
                {
                    "name": "small",
                    "accuracy": 70,
                    "model": {"storageUri": "/models/small.pt"},
                    "profiles": [{"pool": "gpu", "batches": [{"batchSize": 1, "p50Ms": 5}]}],
                },
            ],
            **spec,
        },
    }
    svc = parse_resource(obj)
    assert isinstance(svc, InferenceService)
    return svc


def pool(name: str = "gpu", devices: int = 1) -> DevicePool:
    p = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "DevicePool",
            "metadata": {"name": name},
            "spec": {"devices": devices, "resources": {"limits": {"nvidia.com/gpu": 1}}},
        }
    )
    assert isinstance(p, DevicePool)
    return p


NO_DRAIN = LoopSettings(drain_s=0.0)
"""Old replicas go as soon as the final routing is in place (the drain has its own test)."""


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class MemoryActuator:
    """Applies steps to a World the way a driver's observation would then report them."""

    def __init__(self, world: World, clock: Clock, fail_on: set[WorkerKey] | None = None) -> None:
        self.world, self.clock = world, clock
        self.log: list[Step] = []
        self.fail_on = fail_on or set()

    async def apply(self, step: Step) -> None:
        self.log.append(step)
        w = self.world
        if isinstance(step, EnsureWorker):
            if step.spec.key in self.fail_on:
                raise RuntimeError("quota exceeded")
            have = w.workers.get(step.spec.key)
            ready = min(have.ready_replicas if have else 0, step.spec.replicas)
            w.workers[step.spec.key] = RunningWorker(step.spec, ready)
        elif isinstance(step, RemoveWorker):
            del w.workers[step.key]
        elif isinstance(step, ApplyRouting):
            w.routing[step.service] = AppliedRouting(step.routing, self.clock())
        elif isinstance(step, RemoveService):
            for k in step.workers:
                w.workers.pop(k, None)
            w.routing.pop(step.service, None)
        elif isinstance(step, UpdateStatus):
            w.status[step.service] = step.status


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "local"
"""The local example's manifests (`examples/local/`)."""
EXAMPLE_SERVICE = "default/classifier"


def example_world() -> World:
    """The local example's services and pools, no workers yet."""
    manifests = load([EXAMPLE])
    return World(
        services={s.key: s for s in manifests.services},
        pools={p.metadata.name: p for p in manifests.pools},
    )


def all_ready(world: World) -> None:
    for k, w in world.workers.items():
        world.workers[k] = RunningWorker(w.spec, w.spec.replicas)


def key(variant: str, svc: str = "svc") -> WorkerKey:
    return WorkerKey(service=f"default/{svc}", variant=variant, pool="gpu")


def plan_row(
    svc: str,
    variant: str,
    replicas: int,
    per_replica: float,
    routed: float,
    *,
    spare: int = 0,
    pool_name: str = "gpu",
    **fields: Any,
) -> PlanRow:
    """A plan row of `service`'s variants (big: accuracy 80, small: 70); `fields` set the
    row's other fields (or override these)."""
    row: dict[str, Any] = {
        "service": svc,
        "variant": variant,
        "pool": pool_name,
        "replicas": replicas,
        "spare_replicas": spare,
        "max_batch_size": 1,
        "capacity_qps_per_replica": per_replica,
        "capacity_qps": replicas * per_replica,
        "routed_qps": routed,
        "accuracy": 80.0 if variant == "big" else 70.0,
    }
    return PlanRow(**(row | fields))


def kinds(steps: Sequence[Step]) -> list[str]:
    return [type(s).__name__ for s in steps]


@pytest.fixture
def env() -> tuple[World, Clock, ControlLoop, MemoryActuator]:
    clock = Clock()
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    return world, clock, ControlLoop(NO_DRAIN, clock=clock), MemoryActuator(world, clock)


async def test_create_then_ready_then_no_churn(
    env: tuple[World, Clock, ControlLoop, MemoryActuator],
) -> None:
    world, _clock, loop, act = env
    res = await loop.reconcile(world, DemandView(), act)
    assert kinds(res.applied) == ["EnsureWorker", "ApplyRouting", "RecordEvent", "UpdateStatus"]
    first = res.applied[0]
    assert isinstance(first, EnsureWorker)
    assert first.spec.key == key("big")
    assert first.spec.replicas == 1
    routing = res.applied[1]
    assert isinstance(routing, ApplyRouting)
    # Named before it is ready, as pending, so that routers take it at its first health check.
    assert [(r.key, r.weight, r.pending) for r in routing.routing.routes] == [
        (key("big"), 1.0, True)
    ]
    assert not routing.routing.final
    assert routing.routing.keys() == set()
    status = world.status["default/svc"]
    conds = {c.type: c for c in status.conditions}
    assert conds["Ready"].status == "False"
    assert conds["Planned"].status == "True"
    assert status.effective_accuracy == 80
    assert status.observed_generation == 1

    all_ready(world)
    res = await loop.reconcile(world, DemandView(), act)
    assert kinds(res.applied) == ["ApplyRouting", "UpdateStatus"]
    applied = world.routing["default/svc"].routing
    assert applied.final
    assert [(r.key, r.weight) for r in applied.routes] == [(key("big"), 1.0)]
    assert {c.type: c.status for c in world.status["default/svc"].conditions}["Ready"] == "True"

    # Same inputs, no steps: also for a fresh loop (an operator restart).
    assert (await loop.reconcile(world, DemandView(), act)).applied == []
    assert ControlLoop(clock=loop.clock).decide(world, DemandView()).steps == []


async def test_demand_rise_switches_variant_make_before_break(
    env: tuple[World, Clock, ControlLoop, MemoryActuator],
) -> None:
    world, clock, loop, act = env
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)
    act.log.clear()

    # 150 req/s: big (45 req/s per replica) cannot serve it on one device; small can.
    res = await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)
    steps = [s for s in res.applied if not isinstance(s, UpdateStatus | RecordEvent)]
    assert kinds(steps) == ["EnsureWorker", "ApplyRouting"]
    assert isinstance(steps[0], EnsureWorker)
    assert steps[0].spec.key == key("small")
    assert key("big") in world.workers, "the old variant keeps serving until the new is ready"
    table = world.routing["default/svc"].routing
    assert not table.final
    # big carries the traffic; small, loading, is named as pending with the plan's capacity.
    # Shares: big its ready 45 req/s, small its planned 150 (the router leaves small out of
    # its split until small passes a health check, then sends it 150/195).
    assert [(r.key, round(r.weight, 4), r.pending, r.capacity_qps) for r in table.routes] == [
        (key("big"), round(45 / 195, 4), False, 45.0),
        (key("small"), round(150 / 195, 4), True, 180.0),
    ]
    assert table.keys() == {key("big")}
    sent = routing_table(table, lambda k: f"http://{k.variant}")
    assert sent is not None
    assert [(b.name, b.pending) for b in sent.backends] == [("big@gpu", False), ("small@gpu", True)]
    events = [s for s in res.applied if isinstance(s, RecordEvent)]
    assert {e.reason for e in events} == {"AccuracyScaledDown", "ReplicasChanged"}

    all_ready(world)
    res = await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)
    steps = [s for s in res.applied if not isinstance(s, UpdateStatus | RecordEvent)]
    # Traffic moves first, then the old variant goes: not in the pass that writes the table,
    # even without a drain (`MIN_SETTLE_S`).
    assert kinds(steps) == ["ApplyRouting"]
    assert res.decision.requeue_after_s == pytest.approx(MIN_SETTLE_S)
    clock.t += MIN_SETTLE_S
    res = await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)
    steps = [s for s in res.applied if not isinstance(s, UpdateStatus | RecordEvent)]
    assert kinds(steps) == ["RemoveWorker"]
    assert isinstance(steps[0], RemoveWorker)
    assert steps[0].key == key("big")
    assert [r.key for r in world.routing["default/svc"].routing.routes] == [key("small")]
    assert world.status["default/svc"].effective_accuracy == 70
    assert (await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)).applied == []


async def swap_ready(
    loop: ControlLoop, world: World, act: MemoryActuator, demand: DemandView
) -> None:
    """Serve the service at no demand, then at `demand` (a swap to small), with every replica
    ready: the next pass routes to the new replicas and starts the drain of the old."""
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)
    await loop.reconcile(world, demand, act)
    all_ready(world)


async def test_drain_delays_removal_and_asks_for_requeue() -> None:
    clock = Clock()
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    loop = ControlLoop(LoopSettings(drain_s=5.0), clock=clock)
    act = MemoryActuator(world, clock)
    demand = DemandView(qps={"default/svc": 150.0})
    await swap_ready(loop, world, act, demand)
    res = await loop.reconcile(world, demand, act)
    assert not any(isinstance(s, RemoveWorker) for s in res.applied)
    assert res.decision.requeue_after_s == pytest.approx(5.0)
    clock.t += 2.0
    res = await loop.reconcile(world, demand, act)
    assert res.applied == []
    assert res.decision.requeue_after_s == pytest.approx(3.0)
    clock.t += 3.0
    res = await loop.reconcile(world, demand, act)
    assert kinds(res.applied) == ["RemoveWorker"]


async def test_without_a_drain_old_workers_wait_for_the_routers_to_confirm() -> None:
    """drain_s 0: the old replicas go once the routers have the final table, not in the pass
    that writes it, nor while the routers have yet to confirm it (`Reports.confirmed` then
    says it was applied now)."""
    clock = Clock()
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    loop = ControlLoop(NO_DRAIN, clock=clock)
    act = MemoryActuator(world, clock)
    demand = DemandView(qps={"default/svc": 150.0})
    await swap_ready(loop, world, act, demand)
    res = await loop.reconcile(world, demand, act)  # the final routing goes out
    assert kinds(res.applied) == ["ApplyRouting", "UpdateStatus"]
    assert res.decision.requeue_after_s == pytest.approx(MIN_SETTLE_S)
    for _ in range(3):  # not yet confirmed
        clock.t += MIN_SETTLE_S
        applied = world.routing["default/svc"]
        world.routing["default/svc"] = AppliedRouting(applied.routing, applied_at_s=clock.t)
        res = await loop.reconcile(world, demand, act)
        assert res.applied == []
        assert res.decision.requeue_after_s == pytest.approx(MIN_SETTLE_S)
    clock.t += MIN_SETTLE_S  # confirmed at the last pass
    res = await loop.reconcile(world, demand, act)
    assert kinds(res.applied) == ["RemoveWorker"]


async def test_a_drain_over_by_a_rounding_error_is_over() -> None:
    """Routing applied at t=0.4, drain 1 s: at t=1.4, 1.0 - (1.4 - 0.4) is 1.1e-16, not 0. The
    old replicas go now; a requeue that short re-ran the pass at the same simulated instant,
    forever (the simulator's overload run hung on it)."""
    clock = Clock()
    clock.t = 0.0
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    loop = ControlLoop(LoopSettings(drain_s=1.0), clock=clock)
    act = MemoryActuator(world, clock)
    demand = DemandView(qps={"default/svc": 150.0})
    await swap_ready(loop, world, act, demand)
    clock.t = 0.4
    res = await loop.reconcile(world, demand, act)  # the final routing goes out at 0.4
    assert res.decision.requeue_after_s == pytest.approx(1.0)
    clock.t = 1.4
    assert 1.0 - (clock.t - 0.4) > 0  # the rounding error itself
    res = await loop.reconcile(world, demand, act)
    assert kinds(res.applied) == ["RemoveWorker"]
    assert res.decision.requeue_after_s is None


async def test_failed_make_step_holds_back_the_break(
    env: tuple[World, Clock, ControlLoop, MemoryActuator],
) -> None:
    world, _clock, loop, act = env
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)
    # Pretend the big worker reports ready but the small one cannot be created.
    act.fail_on = {key("small")}
    res = await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)
    assert len(res.failed) == 1
    assert key("big") in world.workers
    assert not any(isinstance(s, RemoveWorker) for s in res.applied)


async def test_shrinking_pool_replans_and_scales_down_after_traffic_moved() -> None:
    clock = Clock()
    world = World(services={"default/svc": service(qps=120.0)}, pools={"gpu": pool(devices=4)})
    loop, act = ControlLoop(NO_DRAIN, clock=clock), MemoryActuator(world, clock)
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)
    assert world.workers[key("big")].spec.replicas == 3  # 120 req/s at 45 per replica

    world.pools["gpu"] = pool(devices=1)
    res = await loop.reconcile(world, DemandView(), act)
    steps = [s for s in res.applied if not isinstance(s, UpdateStatus | RecordEvent)]
    assert kinds(steps)[0] == "EnsureWorker"
    assert isinstance(steps[0], EnsureWorker)
    assert steps[0].spec.key == key("small")
    # The pool has no free device for small: one big replica goes at once (a rolling step,
    # after the routing that no longer counts it); the other two serve until small is ready.
    assert kinds(steps[1:]) == ["ApplyRouting", "EnsureWorker"]
    assert isinstance(steps[2], EnsureWorker)
    assert steps[2].stage == "break"
    assert world.workers[key("big")].spec.replicas == 2
    all_ready(world)
    res = await loop.reconcile(world, DemandView(), act)
    steps = [s for s in res.applied if not isinstance(s, UpdateStatus | RecordEvent)]
    assert kinds(steps) == ["ApplyRouting"]
    clock.t += MIN_SETTLE_S
    res = await loop.reconcile(world, DemandView(), act)
    steps = [s for s in res.applied if not isinstance(s, UpdateStatus | RecordEvent)]
    assert kinds(steps) == ["RemoveWorker"]
    assert set(world.workers) == {key("small")}


async def test_invalid_service_is_isolated_and_deleted_service_removed(
    env: tuple[World, Clock, ControlLoop, MemoryActuator],
) -> None:
    world, _clock, loop, act = env
    world.pools["gpu"] = pool(devices=2)
    world.services["default/other"] = service("other")
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)

    del world.services["default/other"]
    world.invalid["default/other"] = [("spec.variants[0].accuracy", "must be at most 100")]
    world.invalid_generation["default/other"] = 2
    res = await loop.reconcile(world, DemandView(), act)
    bad = world.status["default/other"]
    conds = {c.type: c for c in bad.conditions}
    assert conds["InvalidSpec"].status == "True"
    assert "spec.variants[0].accuracy" in conds["InvalidSpec"].message
    assert bad.observed_generation == 2
    assert key("big", "other") in world.workers, "an invalid spec does not tear down workers"
    assert not any(isinstance(s, RemoveService) for s in res.applied)

    del world.invalid["default/other"]
    res = await loop.reconcile(world, DemandView(), act)
    assert RemoveService("default/other", (key("big", "other"),)) in res.applied
    assert "default/other" not in world.routing
    assert set(world.workers) == {key("big")}


async def test_planner_failure_is_reported_not_raised(
    env: tuple[World, Clock, ControlLoop, MemoryActuator],
) -> None:
    world, clock, _loop, act = env

    def broken(problem: Problem) -> Plan:
        raise RuntimeError("solver crashed")

    loop = ControlLoop(planner=broken, clock=clock)
    res = await loop.reconcile(world, DemandView(), act)
    assert res.decision.error is not None
    assert "solver crashed" in res.decision.error
    conds = {c.type: c for c in world.status["default/svc"].conditions}
    assert conds["Planned"].status == "False"
    assert "solver crashed" in conds["Planned"].message


async def test_planning_leaves_the_event_loop_free(
    env: tuple[World, Clock, ControlLoop, MemoryActuator],
) -> None:
    """The planner runs off the event loop: a planner that waits for the loop to run a
    coroutine completes (on the loop it would wait in vain and fail the plan)."""
    world, clock, _loop, act = env
    loop_ran = threading.Event()

    def waits_for_the_event_loop(problem: Problem) -> Plan:
        if not loop_ran.wait(5.0):
            raise RuntimeError("the event loop was blocked while planning")
        return default_planner(problem)

    async def on_the_event_loop() -> None:
        await asyncio.sleep(0.05)
        loop_ran.set()

    loop = ControlLoop(planner=waits_for_the_event_loop, clock=clock)
    res, _ = await asyncio.gather(loop.reconcile(world, DemandView(), act), on_the_event_loop())
    assert res.decision.error is None
    assert res.decision.planned
    assert key("big") in world.workers


async def test_demand_unavailable_and_shortfall_conditions(
    env: tuple[World, Clock, ControlLoop, MemoryActuator],
) -> None:
    world, _clock, loop, act = env
    world.services["default/svc"] = service(
        demand={"source": "Prometheus", "qps": 40, "headroom": 0.0}
    )
    demand = DemandView(qps={"default/svc": 1000.0}, unavailable={"default/svc": "timeout"})
    res = await loop.reconcile(world, demand, act)
    conds = {c.type: c for c in world.status["default/svc"].conditions}
    assert conds["DemandUnavailable"].status == "True"
    assert "timeout" in conds["DemandUnavailable"].message
    assert conds["Degraded"].status == "True"
    # In overload the plan drops headroom and the utilization margin: one device of small
    # serves its profiled 200 req/s. The message says why the rest cannot be served.
    assert "800.0 of 1000.0" in conds["Degraded"].message
    assert "every device of gpu (1/1) is planned" in conds["Degraded"].message
    assert "overload" in conds["Degraded"].message
    assert any(isinstance(s, RecordEvent) and s.reason == "Degraded" for s in res.applied)


def test_routing_follows_ready_capacity() -> None:
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    loop = ControlLoop()
    plan, _, _ = loop.make_plan(world, DemandView(qps={"default/svc": 150.0}))
    d = loop.decide(world, DemandView(qps={"default/svc": 150.0}))
    small = d.targets[key("small")]
    big = small.model_copy(
        update={"key": key("big"), "accuracy": 80.0, "capacity_qps_per_replica": 45.0}
    )
    # small (2 replicas) half ready, big still running and ready: big takes the rest.
    target = small.model_copy(update={"replicas": 2, "capacity_qps_per_replica": 100.0})
    r = service_routing(
        "default/svc",
        100.0,
        [row.model_copy(update={"replicas": 2}) for row in plan.rows],
        {key("small"): target},
        {key("big"): big},
        {key("small"): 1, key("big"): 1},
    )
    weights = {x.key.variant: x.weight for x in r.routes}
    assert not r.final
    # 150 req/s planned: the ready small replica takes 100, the old big one the other 45.
    assert weights == {
        "small": pytest.approx(100 / 145, abs=1e-3),
        "big": pytest.approx(45 / 145, abs=1e-3),
    }
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-3)
    table = routing_table(r, lambda k: f"http://{k.variant}:8080")
    assert table is not None
    assert {b.name for b in table.backends} == {"small@gpu", "big@gpu"}
    assert table.version == r.digest()
    # Each backend carries its plan's profile (up to its batch): the router predicts a small
    # running batch at its own size.
    assert {b.name: b.profile_ms for b in table.backends} == {
        "small@gpu": {1: 5.0},
        "big@gpu": {1: 5.0},  # `big` above is a copy of small's spec
    }


def test_a_transition_routes_no_weight_to_the_burst_buffer() -> None:
    """While planned replicas load, the estimate beyond their ready capacity is not sent by
    weight to a burst-buffer group (spare replicas only): that would pay its lower accuracy on
    a share of every request. It stays in the table, with its capacity, for the fast loop;
    only while no other replica is ready does it take the traffic by weight (found on a
    sawtooth: a swap's old replica made room while the new one loaded, and the router, with
    no weight anywhere, had no table and held or refused every request for two seconds)."""
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=4)})
    loop = ControlLoop()
    d = loop.decide(world, DemandView(qps={"default/svc": 150.0}))
    spec = next(iter(d.targets.values()))

    def group(variant: str, replicas: int, accuracy: float, per: float) -> WorkerSpec:
        update = {"key": key(variant), "replicas": replicas, "accuracy": accuracy}
        return spec.model_copy(update=update | {"capacity_qps_per_replica": per})

    big, small = group("big", 3, 80.0, 50.0), group("small", 1, 70.0, 200.0)

    def row(variant: str, replicas: int, spare: int, routed: float, per: float) -> PlanRow:
        return plan_row("default/svc", variant, replicas, per, routed, spare=spare)

    rows = [row("big", 3, 0, 150.0, 50.0), row("small", 1, 1, 0.0, 200.0)]
    targets = {key("big"): big, key("small"): small}

    def weights(ready_big: int) -> dict[str, tuple[float, float]]:
        r = service_routing(
            "default/svc", 100.0, rows, targets, targets, {key("big"): ready_big, key("small"): 1}
        )
        assert not r.final
        return {x.key.variant: (x.weight, x.capacity_qps) for x in r.routes}

    # One of three big replicas ready (50 of the 150 req/s planned): it takes everything by
    # weight; the spare is there, weightless, with its 200 req/s for the fast loop.
    assert weights(1) == {"big": (1.0, 50.0), "small": (0.0, 200.0)}
    # No planned replica ready yet (a swap's new replicas load after the old ones made room):
    # the spare takes the traffic by weight; big is named as pending at its plan (150 req/s
    # against the spare's 200), out of the router's split until its health check passes.
    assert weights(0) == {"big": (0.4286, 150.0), "small": (0.5714, 200.0)}
    r = service_routing("default/svc", 100.0, rows, targets, targets, {key("small"): 1})
    table = routing_table(r, lambda k: f"http://{k.variant}:8080")
    assert table is not None
    assert [(b.name, b.weight, b.pending) for b in table.backends] == [
        ("big@gpu", 0.4286, True),
        ("small@gpu", 0.5714, False),
    ]
    router = RoutingDecider(table)
    assert router.plan_weights() == {"small@gpu": 1.0}  # until big passes its check
    # Nothing ready at all: a table of pending backends, which the router holds requests for
    # (its activator) until one passes its health check.
    nothing = service_routing("default/svc", 100.0, rows, targets, targets, {})
    table = routing_table(nothing, lambda k: f"http://{k.variant}:8080")
    assert table is not None
    assert [(b.name, b.pending) for b in table.backends] == [
        ("big@gpu", True),
        ("small@gpu", True),
    ]
    assert RoutingDecider(table).plan_weights() == {}


async def test_settled_services_are_skipped_and_changes_still_seen() -> None:
    """A service whose inputs equal those of a pass with nothing to do is not recomputed; any
    change of its inputs (readiness, status, spec) is acted on; a plan change alone (the new
    plan becomes the planner's `current`) does not cost another planner call."""
    clock = Clock()
    world = World(
        services={"default/a": service("a"), "default/b": service("b")},
        pools={"gpu": pool(devices=4)},
    )
    calls: list[Problem] = []

    def planner(problem: Problem) -> Plan:
        from accordion.solver.planner import plan

        calls.append(problem)
        return plan(problem)

    loop = ControlLoop(planner=planner, clock=clock)
    act = MemoryActuator(world, clock)
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)
    assert (await loop.reconcile(world, DemandView(), act)).applied == []
    assert len(calls) == 1
    assert set(loop._settled) == {"default/a", "default/b"}

    computed: list[str] = []
    original = loop._decide_service

    def spy(svc_key: str, *args: Any, **kwargs: Any) -> Any:
        computed.append(svc_key)
        return original(svc_key, *args, **kwargs)

    loop._decide_service = spy  # type: ignore[method-assign]
    assert loop.decide(world, DemandView()).steps == []
    assert computed == []

    # A replica of a's worker stops being ready: only a is recomputed, and its routing moves.
    (wk,) = [k for k in world.workers if k.service == "default/a"]
    spec = world.workers[wk].spec
    world.workers[wk] = RunningWorker(spec, spec.replicas - 1)
    steps = loop.decide(world, DemandView()).steps
    assert computed == ["default/a"]
    assert {getattr(s, "service", None) for s in steps if isinstance(s, ApplyRouting)} == {
        "default/a"
    }
    world.workers[wk] = RunningWorker(spec, spec.replicas)

    # Someone overwrites b's status: it is written back.
    computed.clear()
    world.status["default/b"] = world.status["default/b"].model_copy(update={"plan": []})
    steps = loop.decide(world, DemandView()).steps
    assert "default/b" in computed
    assert [s.service for s in steps if isinstance(s, UpdateStatus)] == ["default/b"]

    # A spec change re-plans once; the plan it makes, fed back as `current`, does not.
    loop._decide_service = original  # type: ignore[method-assign]
    await loop.reconcile(world, DemandView(), act)
    world.services["default/b"] = service("b", qps=120.0)
    await loop.reconcile(world, DemandView(), act)
    assert len(calls) == 2
    all_ready(world)
    for _ in range(3):
        await loop.reconcile(world, DemandView(), act)
    assert len(calls) == 2
    assert loop.decide(world, DemandView()).steps == []


@pytest.mark.parametrize("failure", ["raises", "no solution"])
async def test_a_failed_solve_keeps_the_last_plan(failure: str) -> None:
    """No worker is touched when the planner fails: the last good plan stays in force (and the
    same failing problem is not solved again every pass); Planned says why."""
    clock = Clock()
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=2)})
    healthy = True

    def planner(problem: Problem) -> Plan:
        result = default_planner(problem)
        if healthy:
            return result
        if failure == "raises":
            raise RuntimeError("solver crashed")
        stats = result.stats.model_copy(update={"status": "NO_SOLUTION"})
        return result.model_copy(update={"rows": [], "stats": stats})

    loop, act = ControlLoop(NO_DRAIN, planner=planner, clock=clock), MemoryActuator(world, clock)
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)
    before = dict(world.workers)
    routing = world.routing["default/svc"].routing
    healthy = False
    res = await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)
    assert res.decision.error is not None
    assert [s for s in res.applied if not isinstance(s, UpdateStatus | RecordEvent)] == []
    assert world.workers == before
    assert world.routing["default/svc"].routing == routing
    conds = {c.type: c for c in world.status["default/svc"].conditions}
    assert (conds["Planned"].status, conds["Planned"].reason) == ("False", "PlanningFailed")
    again = await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)
    assert again.applied == []
    healthy = True
    res = await loop.reconcile(world, DemandView(qps={"default/svc": 151.0}), act)
    assert res.decision.error is None
    conds = {c.type: c for c in world.status["default/svc"].conditions}
    assert conds["Planned"].status == "True"
