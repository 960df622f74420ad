"""The rolling step of a full pool (`ControlLoop._make_room`): which serving replica goes.

When a re-plan swaps models on a full pool and no old replica can go without its service
losing capacity it needs, one goes per pass (a rolling update). The device it frees goes to the
pool's longest-waiting new replica (the scheduler's queue, the simulator's pool queue), so the
replica that goes must be of the service whose new replica is first in line: rolling another
service's replica hands that service's capacity to the first one, and it stays short until its
own new replicas' turn comes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accordion.operator.control.desired import WorkerKey, spare_by_group, worker_specs
from accordion.operator.control.loop import ControlLoop, DemandView, RunningWorker, World
from accordion.solver import PlanRow, ServicePlan

from .test_loop import NO_DRAIN, Clock, MemoryActuator, all_ready, plan_row, pool, service


def _row(svc: str, variant: str, pool_name: str = "gpu") -> PlanRow:
    return plan_row(svc, variant, 1, 40.0, 40.0, pool_name=pool_name)


def _summary(svc: str, demand: float) -> ServicePlan:
    return ServicePlan(
        service=svc,
        demand_qps=demand,
        served_qps=demand,
        unserved_qps=0.0,
        capacity_qps=demand,
        effective_accuracy=None,
        floor_met=True,
    )


def _world(
    running: list[PlanRow], pools: dict[str, int], make: Callable[[str], Any] = service
) -> World:
    """Services a and b (`make`d), the `pools`, and the `running` rows' workers all ready."""
    world = World(
        services={"default/a": make("a"), "default/b": make("b")},
        pools={name: pool(name, devices=n) for name, n in pools.items()},
    )
    for key, spec in worker_specs(running, world.services, world.pools).items():
        world.workers[key] = RunningWorker(spec, spec.replicas)
    return world


def _key(svc: str, variant: str, pool_name: str = "gpu") -> WorkerKey:
    return WorkerKey(service=f"default/{svc}", variant=variant, pool=pool_name)


def _swap_both(
    pools: dict[str, int], a_runs: str = "big", b_runs: str = "small"
) -> tuple[World, dict[WorkerKey, Any]]:
    """On the full pool gpu, a runs `a_runs` x2 and b `b_runs` x2; the new plan moves one
    replica of each to the other variant."""
    a_old, b_old = _row("default/a", a_runs), _row("default/b", b_runs)
    two = {"replicas": 2, "capacity_qps": 80.0, "routed_qps": 80.0}
    world = _world([a_old.model_copy(update=two), b_old.model_copy(update=two)], pools)
    other = {"big": "small", "small": "big"}
    new = [a_old, _row("default/a", other[a_runs]), b_old, _row("default/b", other[b_runs])]
    return world, worker_specs(new, world.services, world.pools)


def summaries(world: World) -> dict[str, ServicePlan]:
    """Each service needs all but half a replica of its ready capacity: none goes for free."""
    out = {}
    for svc in ("default/a", "default/b"):
        mine = [w for k, w in world.workers.items() if k.service == svc]
        ready = sum(w.ready_replicas * w.spec.capacity_qps_per_replica for w in mine)
        out[svc] = _summary(svc, ready - 0.5 * mine[0].spec.capacity_qps_per_replica)
    return out


def test_the_service_first_in_line_rolls() -> None:
    """Both services wait for a device of gpu; a's new replica was asked for first (same pass,
    services in order), so a's old replica goes, not b's less accurate one (the old order)."""
    world, targets = _swap_both({"gpu": 4})
    loop = ControlLoop(NO_DRAIN, clock=Clock())
    assert loop._make_room(world, targets, summaries(world)) == {_key("a", "big"): 1}


def test_a_service_keeps_its_place_in_line_across_passes() -> None:
    """b's new replica has waited since an earlier pass, a's was asked for only now: b rolls,
    although a's old replica is the less accurate one (the old order's pick)."""
    world, targets = _swap_both({"gpu": 4}, a_runs="small", b_runs="big")
    loop = ControlLoop(NO_DRAIN, clock=Clock())
    # The first pass: only b's plan changed (a keeps its two small replicas).
    first = {k: s for k, s in targets.items() if k.service == "default/b"}
    first[_key("a", "small")] = targets[_key("a", "small")].with_replicas(2)
    assert loop._make_room(world, first, summaries(world)) == {_key("b", "big"): 1}
    # The next pass (the scheduler has not moved yet): a's new replica joins the line behind.
    assert loop._make_room(world, targets, summaries(world)) == {_key("b", "big"): 1}


def _two_pool_service(name: str) -> Any:
    profiles = [
        {"pool": p, "batches": [{"batchSize": 1, "p50Ms": ms}]}
        for p, ms in (("cpu", 20), ("gpu", 20))
    ]
    variants = [
        {
            "name": v,
            "accuracy": acc,
            "model": {"storageUri": f"/models/{v}.pt"},
            "profiles": profiles,
        }
        for v, acc in (("big", 80), ("small", 70))
    ]
    return service(name, variants=variants)


def test_the_first_in_line_rolled_elsewhere_this_pass_rolls_here_at_the_next() -> None:
    """a is first in line in both full pools, cpu and gpu. It rolls in cpu (pools in order), and
    a service rolls at most one replica a pass: in gpu nobody rolls, since the device would go to
    a's new replica all the same, at b's cost. At the next pass a rolls in gpu."""
    running, new = [], []
    for pool_name in ("cpu", "gpu"):
        a_old, b_old = _row("default/a", "big", pool_name), _row("default/b", "small", pool_name)
        two = {"replicas": 2, "capacity_qps": 80.0, "routed_qps": 80.0}
        running += [a_old.model_copy(update=two), b_old.model_copy(update=two)]
        new += [
            a_old,
            _row("default/a", "small", pool_name),
            b_old,
            _row("default/b", "big", pool_name),
        ]
    world = _world(running, {"cpu": 4, "gpu": 4}, _two_pool_service)
    targets = worker_specs(new, world.services, world.pools)
    loop = ControlLoop(NO_DRAIN, clock=Clock())
    assert loop._make_room(world, targets, summaries(world)) == {_key("a", "big", "cpu"): 1}
    # a's cpu replica has gone, its new one there is ready: at the next pass a rolls in gpu,
    # and b, now first in cpu's line, rolls there.
    gone = _key("a", "big", "cpu")
    world.workers[gone] = RunningWorker(world.workers[gone].spec.with_replicas(1), 1)
    world.workers[_key("a", "small", "cpu")] = RunningWorker(targets[_key("a", "small", "cpu")], 1)
    assert loop._make_room(world, targets, summaries(world)) == {
        _key("a", "big", "gpu"): 1,
        _key("b", "small", "cpu"): 1,
    }


def _big_beside_a_slow_one(slow_qps: float) -> tuple[World, dict[WorkerKey, Any]]:
    """a serves on the full pool gpu with one big replica (40 req/s) and on cpu with one small
    replica of `slow_qps`; b holds gpu's other device. The new plan swaps a's big replica on gpu
    for a small one, and a needs nearly all it has (none goes for free)."""
    a_gpu = _row("default/a", "big", "gpu")
    a_cpu = plan_row("default/a", "small", 1, slow_qps, slow_qps, pool_name="cpu")
    b_gpu = _row("default/b", "big", "gpu")
    world = _world([a_gpu, a_cpu, b_gpu], {"cpu": 1, "gpu": 2}, _two_pool_service)
    new = [_row("default/a", "small", "gpu"), a_cpu, b_gpu]
    return world, worker_specs(new, world.services, world.pools)


def test_a_roll_never_takes_most_of_a_services_ready_capacity() -> None:
    """The rolling step takes a replica only if it holds at most half of its service's ready
    capacity (`ROLL_MAX_SHARE`). Beside a slow replica of 4 req/s, a's big replica holds 91% of
    a's capacity: it stays, and the new replica waits (counted by replicas, "not the last ready
    one", it rolled and a served 4 req/s of 44 for a whole start-up). Beside an equal replica
    it holds half, and rolls as before."""
    loop = ControlLoop(NO_DRAIN, clock=Clock())
    world, targets = _big_beside_a_slow_one(4.0)
    demand = {"default/a": _summary("default/a", 40.0), "default/b": _summary("default/b", 40.0)}
    assert loop._make_room(world, targets, demand) == {}
    world, targets = _big_beside_a_slow_one(40.0)
    demand["default/a"] = _summary("default/a", 76.0)
    assert loop._make_room(world, targets, demand) == {_key("a", "big", "gpu"): 1}


def test_a_new_spare_replica_never_makes_a_serving_one_roll() -> None:
    """On the full pool gpu, a serves with two big replicas and needs them (its demand is all
    but half a replica of what they serve). A plan that adds a spare (burst) replica of a's
    small variant there, and moves one of a's big replicas to cpu, asks gpu for one device more
    than it has: the spare alone waits for it, so nothing rolls (a spare serves only what the
    routed replicas cannot; rolling a serving replica for it cost mobilenet a third of its
    capacity at the bursty trace's first burst). A routed replica in the spare's place rolls."""
    a_gpu = _row("default/a", "big", "gpu").model_copy(
        update={"replicas": 2, "capacity_qps": 80.0, "routed_qps": 80.0}
    )
    world = _world([a_gpu], {"cpu": 1, "gpu": 2}, _two_pool_service)
    new = [
        _row("default/a", "big", "gpu"),
        _row("default/a", "big", "cpu"),
        plan_row("default/a", "small", 1, 40.0, 0.0, spare=1, pool_name="gpu"),
    ]
    targets = worker_specs(new, world.services, world.pools)
    assert targets[_key("a", "small")].replicas == 1
    demand = {"default/a": _summary("default/a", 60.0), "default/b": _summary("default/b", 0.0)}
    loop = ControlLoop(NO_DRAIN, clock=Clock())
    assert loop._make_room(world, targets, demand, spare_by_group(new)) == {}
    # The same replica routed (no spare): a rolls one big replica for it, as before.
    assert loop._make_room(world, targets, demand, {}) == {_key("a", "big", "gpu"): 1}


async def _one_device_serving() -> tuple[World, Clock, ControlLoop, MemoryActuator]:
    """svc on the one-device pool gpu, its big replica ready and routed (at no demand)."""
    clock = Clock()
    world = World(services={"default/svc": service()}, pools={"gpu": pool(devices=1)})
    loop = ControlLoop(NO_DRAIN, clock=clock)
    act = MemoryActuator(world, clock)
    await loop.reconcile(world, DemandView(), act)
    all_ready(world)
    await loop.reconcile(world, DemandView(), act)
    return world, clock, loop, act


async def test_a_new_replica_that_waits_for_a_device_is_named_in_the_ready_condition() -> None:
    """The service's one device holds its big replica, its last ready one; at 150 req/s the
    plan swaps it for small, which waits for the device (the rolling step never takes a
    service's last ready replica). Ready says so and names the pool, and says it no more once
    the plan no longer asks for the swap."""
    world, _clock, loop, act = await _one_device_serving()

    def ready_message() -> str:
        return next(c.message for c in world.status["default/svc"].conditions if c.type == "Ready")

    await loop.reconcile(world, DemandView(qps={"default/svc": 150.0}), act)
    assert loop.device_waits == {"default/svc": {"gpu": 1}}
    assert ready_message().startswith(
        "0 of 1 replicas ready; 1 waits for a device of the full pool gpu (held by old replicas"
    )
    # Demand back down: the plan keeps big, nothing waits, and Ready says nothing of it.
    await loop.reconcile(world, DemandView(qps={"default/svc": 40.0}), act)
    assert loop.device_waits == {}
    assert "waits for a device" not in ready_message()


async def test_a_new_replica_that_waited_a_payback_horizon_takes_the_protected_device() -> None:
    """The one-device swap of the test above, held: the rolling step never takes a service's
    last ready replica, so small waits. Once it has waited first in line for longer than a swap
    must pay back in (`swap_payback_s`), big rolls for it: without that a one-GPU service stayed
    on the variant that cannot serve its demand for as long as the demand stayed."""
    world, clock, loop, act = await _one_device_serving()
    busy = DemandView(qps={"default/svc": 150.0})
    await loop.reconcile(world, busy, act)
    clock.t += NO_DRAIN.swap_payback_s - 1.0
    await loop.reconcile(world, busy, act)
    big = _key("svc", "big")
    assert world.workers[big].spec.replicas == 1, "not yet: big is the last ready one"
    assert loop.device_waits == {"default/svc": {"gpu": 1}}
    clock.t += 1.0
    await loop.reconcile(world, busy, act)
    assert big not in world.workers or world.workers[big].spec.replicas == 0
    assert loop.device_waits == {}
