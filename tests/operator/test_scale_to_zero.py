"""minReplicas, maxReplicas, scale to zero and cost in the control loop (real planner, no kopf).

The loop is driven as in test_loop: an in-memory actuator, readiness under the test's control,
a clock the test moves. Demand comes as a driver gives it: a smoothed estimate per service and
when its last arrival was (`DemandView.last_arrival_s`).
"""

from __future__ import annotations

import pytest

from accordion.operator.control.desired import routing_table
from accordion.operator.control.loop import ControlLoop, DemandView, LoopSettings, World

from .test_loop import Clock, MemoryActuator, all_ready, pool, service

KEY = "default/svc"
ROUTER = {"source": "Router", "headroom": 0.0, "burst": {"policy": "Off"}}


def replicas(world: World) -> int:
    return sum(w.spec.replicas for k, w in world.workers.items() if k.service == KEY)


def conditions(world: World) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in world.status[KEY].conditions}


async def settle(loop: ControlLoop, world: World, demand: DemandView, act: MemoryActuator) -> None:
    """Passes until nothing is left to do, replicas ready as soon as they exist, and the clock
    moved on by each requeue the loop asks for (a drain), as a driver does."""
    for _ in range(10):
        all_ready(world)
        result = await loop.reconcile(world, demand, act)
        if result.decision.requeue_after_s is not None:
            act.clock.t += result.decision.requeue_after_s
        elif not result.applied:
            return
    pytest.fail("the loop did not settle")


async def test_an_idle_service_keeps_min_replicas() -> None:
    clock = Clock()
    world = World(
        services={KEY: service(qps=0.0, minReplicas=2, demand=ROUTER)},
        pools={"gpu": pool(devices=4)},
    )
    loop = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    act = MemoryActuator(world, clock)
    await settle(loop, world, DemandView(qps={KEY: 0.0}), act)
    assert replicas(world) == 2
    assert conditions(world)["Ready"] == ("True", "Ready")


async def test_max_replicas_caps_the_plan() -> None:
    clock = Clock()
    world = World(services={KEY: service(qps=500.0, maxReplicas=2)}, pools={"gpu": pool(devices=8)})
    loop = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    act = MemoryActuator(world, clock)
    await settle(loop, world, DemandView(), act)
    assert replicas(world) == 2
    assert conditions(world)["Degraded"][0] == "True"  # the rest is a shortfall


async def test_scale_to_zero_after_the_idle_period_and_back_on_a_request() -> None:
    clock = Clock()
    svc = service(minReplicas=0, scaleToZeroIdleSeconds=60, demand=ROUTER)
    world = World(services={KEY: svc}, pools={"gpu": pool(devices=2)})
    loop = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    act = MemoryActuator(world, clock)

    # A new service counts as active: one replica, though no request came yet.
    demand = DemandView(qps={KEY: 0.0})
    await settle(loop, world, demand, act)
    assert replicas(world) == 1
    assert world.status[KEY].scaled_to_zero is False

    # Requests until t0 + 30 s, then none: still one replica at t0 + 89 s ...
    last = clock.t + 30
    clock.t += 89
    demand = DemandView(qps={KEY: 0.01}, last_arrival_s={KEY: last})
    assert loop.pass_due(world, demand) == []
    await settle(loop, world, demand, act)
    assert replicas(world) == 1

    # ... and none once 60 s have passed without a request: the pass is due at once.
    clock.t += 2
    assert loop.pass_due(world, demand) == [KEY]
    assert loop.waking() == []  # going to zero is no cold start
    await settle(loop, world, demand, act)
    assert replicas(world) == 0
    assert world.status[KEY].scaled_to_zero is True
    assert conditions(world)["Ready"] == ("True", "ScaledToZero")
    # The router keeps a standby table (its last backend, no capacity): it can (re)start.
    standby = world.routing[KEY].routing
    assert [(r.weight, r.capacity_qps) for r in standby.routes] == [(1.0, 0.0)]
    table = routing_table(standby, lambda k: f"http://{k.variant}")
    assert table is not None
    assert table.planned_capacity_qps() is None

    # A request (the router's immediate report): a replica is planned at once.
    clock.t += 600
    demand = DemandView(qps={KEY: 0.5}, last_arrival_s={KEY: clock.t})
    assert loop.pass_due(world, demand) == [KEY]
    assert loop.waking() == [KEY]  # requests wait in its activator: the driver passes at once
    await settle(loop, world, demand, act)
    assert replicas(world) == 1
    assert world.status[KEY].scaled_to_zero is False


async def test_without_min_replicas_zero_an_idle_service_never_scales_to_zero() -> None:
    clock = Clock()
    world = World(
        services={KEY: service(scaleToZeroIdleSeconds=1, demand=ROUTER)},
        pools={"gpu": pool(devices=2)},
    )
    loop = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    act = MemoryActuator(world, clock)
    await settle(loop, world, DemandView(qps={KEY: 0.0}), act)
    clock.t += 3600
    await settle(loop, world, DemandView(qps={KEY: 0.0}, last_arrival_s={KEY: 0.0}), act)
    assert replicas(world) == 1
    assert world.status[KEY].scaled_to_zero is None


async def test_device_seconds_and_cost_per_1k_requests() -> None:
    """Two replicas of a pool at 3.6 per device-hour for 100 s at 10 req/s: 200
    device-seconds, cost 0.2, 1,000 requests."""
    clock = Clock()
    gpu = pool(devices=4)
    gpu = gpu.model_copy(update={"spec": gpu.spec.model_copy(update={"cost_per_device": 3.6})})
    world = World(services={KEY: service(qps=10.0, minReplicas=2)}, pools={"gpu": gpu})
    loop = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    act = MemoryActuator(world, clock)
    demand = DemandView(qps={KEY: 10.0})
    await settle(loop, world, demand, act)
    assert replicas(world) == 2
    for _ in range(10):
        clock.t += 10
        await loop.reconcile(world, demand, act)
    total = loop.cost.totals[KEY]
    assert total.device_seconds == pytest.approx(200.0)
    assert total.cost == pytest.approx(0.2)
    assert total.cost_per_1k_requests == pytest.approx(0.2)
    # The status gets them at most every minute: the last publication was at +60 s.
    status = world.status[KEY]
    assert status.device_seconds == pytest.approx(120.0)
    assert status.cost_per_1k_requests == pytest.approx(0.2)
    # A new loop (an operator restart) goes on from the status.
    fresh = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    clock.t += 10
    await fresh.reconcile(world, demand, act)
    assert fresh.cost.totals[KEY].device_seconds == pytest.approx(120.0)


async def test_a_static_service_with_declared_demand_is_never_idle() -> None:
    clock = Clock()
    world = World(
        services={KEY: service(qps=5.0, minReplicas=0, scaleToZeroIdleSeconds=1)},
        pools={"gpu": pool(devices=2)},
    )
    loop = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    act = MemoryActuator(world, clock)
    await settle(loop, world, DemandView(), act)
    clock.t += 3600
    await settle(loop, world, DemandView(), act)
    assert replicas(world) == 1
    assert world.status[KEY].scaled_to_zero is False


async def test_a_prewarm_shows_in_status_and_metrics() -> None:
    """Sessions that return 240 s after they stop (a cold start of 2 s measured): after one
    such off period the next return is pre-warmed from 4 s before it, and the status and the
    operator's metrics say so, and then that the traffic came back within it."""
    from accordion.operator import metrics

    clock = Clock()
    svc = service(minReplicas=0, scaleToZeroIdleSeconds=60, demand=ROUTER)
    world = World(services={KEY: svc}, pools={"gpu": pool(devices=2)})
    loop = ControlLoop(LoopSettings(drain_s=0.0), clock=clock)
    act = MemoryActuator(world, clock)
    recorder = metrics.OperatorMetrics()
    labels = {"namespace": "default", "service": "svc"}
    t0 = clock.t

    async def at(t: float, last: float, qps: float) -> None:
        clock.t = t0 + t
        demand = DemandView(
            qps={KEY: qps}, last_arrival_s={KEY: t0 + last}, cold_start_s={KEY: 2.0}
        )
        await settle(loop, world, demand, act)
        result = await loop.reconcile(world, demand, act)
        recorder.record(world, demand, result, loop.plan_time_s, None, loop.idle)

    def shown() -> tuple[bool | None, int | None, int | None]:
        status = world.status[KEY]
        return status.prewarmed, status.prewarms, status.prewarms_met

    def sampled(name: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, labels)

    async def session(start: int, end: int) -> None:
        """Requests every second from `start` to `end` (30 req/s)."""
        for t in range(start, end + 1):
            await at(float(t), float(t), 30.0)

    await session(0, 5)
    await at(20.0, 5.0, 0.0)
    assert replicas(world) == 0
    assert shown() == (False, 0, 0)
    await session(245, 260)  # back after 240 s: the first off period, not pre-warmed
    await at(270.0, 260.0, 0.0)
    assert replicas(world) == 0
    assert shown() == (False, 0, 0)
    assert sampled("accordion_service_prewarmed") == 0
    # 240 s after this session's end less two cold starts: pre-warmed.
    await at(497.0, 260.0, 0.0)
    assert replicas(world) == 1
    assert shown() == (True, 1, 0)
    assert sampled("accordion_service_prewarmed") == 1
    assert sampled("accordion_service_prewarms_total") == 1
    assert sampled("accordion_service_prewarms_met_total") == 0
    # The traffic returns within it.
    await at(500.0, 500.0, 30.0)
    assert shown() == (False, 1, 1)
    assert sampled("accordion_service_prewarmed") == 0
    assert sampled("accordion_service_prewarms_met_total") == 1
