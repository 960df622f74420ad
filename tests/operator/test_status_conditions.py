"""Conditions that tell a user why a service is not as asked: pools it may not use, worker
pods that fail, a demand query refused."""

from __future__ import annotations

import asyncio

from accordion.operator.control.desired import WorkerKey
from accordion.operator.control.loop import ControlLoop, DemandView, RecordEvent, World

from .test_loop import NO_DRAIN, Clock, MemoryActuator, all_ready, pool, service


def conditions(world: World) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in world.status["default/svc"].conditions}


def test_a_pool_the_namespace_may_not_use_shows_as_pool_access() -> None:
    clock = Clock()
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    world.pools["gpu"].spec.allowed_namespaces = ["other"]
    loop, act = ControlLoop(NO_DRAIN, clock=clock), MemoryActuator(world, clock)
    asyncio.run(loop.reconcile(world, DemandView(), act))
    status, reason, message = conditions(world)["PoolAccess"]
    assert (status, reason) == ("False", "Restricted")
    assert "does not admit namespace 'default'" in message
    world.pools["gpu"].spec.allowed_namespaces = None
    world.pools["gpu"] = world.pools["gpu"].model_copy(deep=True)  # a new object, as drivers do
    asyncio.run(loop.reconcile(world, DemandView(), act))
    assert conditions(world)["PoolAccess"][:2] == ("True", "Allowed")


def test_failing_workers_show_as_models_loaded_with_one_warning() -> None:
    clock = Clock()
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    loop, act = ControlLoop(NO_DRAIN, clock=clock), MemoryActuator(world, clock)
    asyncio.run(loop.reconcile(world, DemandView(), act))
    assert "ModelsLoaded" not in conditions(world)
    big = WorkerKey(service="default/svc", variant="big", pool="gpu")
    world.worker_failures = {big: ("ModelLoadFailed", "not a TorchScript file: /models/big.pt")}
    res = asyncio.run(loop.reconcile(world, DemandView(), act))
    status, reason, message = conditions(world)["ModelsLoaded"]
    assert (status, reason) == ("False", "ModelLoadFailed")
    assert message == "big@gpu: ModelLoadFailed: not a TorchScript file: /models/big.pt"
    warnings = [s for s in res.applied if isinstance(s, RecordEvent) and s.type == "Warning"]
    assert [w.reason for w in warnings] == ["ModelLoadFailed"]
    res = asyncio.run(loop.reconcile(world, DemandView(), act))
    assert not [s for s in res.applied if isinstance(s, RecordEvent)]  # once, not every pass
    world.worker_failures = {}
    all_ready(world)
    asyncio.run(loop.reconcile(world, DemandView(), act))
    assert conditions(world)["ModelsLoaded"][:2] == ("True", "Loaded")


def test_a_refused_query_says_so() -> None:
    clock = Clock()
    svc = service(demand={"source": "Prometheus", "qps": 40, "headroom": 0.0})
    world = World(services={"default/svc": svc}, pools={"gpu": pool(devices=1)})
    loop, act = ControlLoop(NO_DRAIN, clock=clock), MemoryActuator(world, clock)
    demand = DemandView(
        unavailable={"default/svc": "Prometheus query rejected: QueryRejectedError: ..."},
        rejected={"default/svc"},
    )
    asyncio.run(loop.reconcile(world, demand, act))
    assert conditions(world)["DemandUnavailable"][:2] == ("True", "QueryRejected")
