"""A new main plan keeps the spare (burst) replicas that can stay (`burst.kept_spare`): only the
services whose spare rows no longer fit or no longer cover their want are planned again, so a
change costs a spare solve of those services, not of the cluster, and moves no other spare.
On large problems only (`KEEP_MIN_OPTIONS`): here 110 services profiled on 4 pools each."""

from __future__ import annotations

from accordion.operator.api import InferenceService
from accordion.operator.control.burst import spare_allocation
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.solver import Plan, Problem
from accordion.solver.planner import plan

from .test_loop import Clock, MemoryActuator, all_ready, pool
from .test_loop_restart import POOLS, spread_service

SERVICES = 110


def _spares(p: Plan | None) -> dict[str, list[tuple[str, str, int]]]:
    assert p is not None
    out: dict[str, list[tuple[str, str, int]]] = {}
    for a in spare_allocation(p):
        out.setdefault(a.service, []).append((a.variant, a.pool, a.replicas))
    return out


async def settled(
    services: list[InferenceService], pools: int, devices: int
) -> tuple[World, ControlLoop, list[Problem]]:
    """A cluster of `services` on `pools` pools of `devices` each, settled by a loop whose
    planner calls are recorded from then on (the list it returns)."""
    calls: list[Problem] = []

    def planner(problem: Problem) -> Plan:
        calls.append(problem)
        return plan(problem)

    clock = Clock()
    world = World(
        services={s.key: s for s in services},
        pools={f"p{p}": pool(f"p{p}", devices=devices) for p in range(pools)},
    )
    loop = ControlLoop(planner=planner, clock=clock)
    act = MemoryActuator(world, clock)
    for _ in range(6):
        await loop.reconcile(world, DemandView(), act)
        all_ready(world)
        clock.t += 60.0
    idle = loop.decide(world, DemandView()).steps
    assert [s for s in idle if s.phase != "status"] == [], "not settled"
    calls.clear()
    return world, loop, calls


def set_demand(world: World, key: str, qps: float) -> None:
    """Service `key`'s static demand becomes `qps` (a new object: the loop treats the world's
    objects as values)."""
    changed = world.services[key].model_copy(deep=True)
    changed.spec.demand.qps = qps
    world.services[key] = changed


def set_devices(world: World, name: str, devices: int) -> None:
    """Pool `name` has `devices` devices from now on (a new object, as `set_demand`)."""
    changed = world.pools[name].model_copy(deep=True)
    changed.spec.devices = devices
    world.pools[name] = changed


async def _settled() -> tuple[World, ControlLoop, list[Problem]]:
    world, loop, calls = await settled(
        [spread_service(i, 4) for i in range(SERVICES)], POOLS, devices=60
    )
    assert len(_spares(loop.last_plan)) >= SERVICES // 2, "the case needs a burst buffer"
    return world, loop, calls


async def test_a_demand_change_plans_the_spare_replicas_of_that_service_alone() -> None:
    world, loop, calls = await _settled()
    before = _spares(loop.last_plan)
    key = "default/s3"
    set_demand(world, key, (world.services[key].spec.demand.qps or 0) * 3)
    decision = loop.decide(world, DemandView())
    assert decision.planned
    # Its spare want tripled: its rows no longer cover it, and its new main replicas may take
    # the devices of another's spares. Every other service keeps its own.
    replanned = {s.name for p in calls[1:] for s in p.services}  # calls[0]: the main plan
    assert key in replanned
    assert len(replanned) <= len(before) // 2
    after = _spares(loop.last_plan)
    for service, rows in before.items():
        if service not in replanned:
            assert after.get(service) == rows, service


async def test_a_pool_change_plans_again_only_the_spares_that_no_longer_fit() -> None:
    world, loop, calls = await _settled()
    before = _spares(loop.last_plan)
    set_devices(world, "p0", 20)
    decision = loop.decide(world, DemandView())
    assert decision.planned
    after = _spares(loop.last_plan)
    # Services planned again: those whose spare rows the new main plan's free devices cannot
    # hold. The rest keep theirs as they were.
    replanned = {s.name for p in calls[1:] for s in p.services}
    assert replanned, "p0 lost 40 devices: some spare there must go"
    assert len(replanned) < len(before)
    for service, rows in before.items():
        if service not in replanned:
            assert after.get(service) == rows, service
