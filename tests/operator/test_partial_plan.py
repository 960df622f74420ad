"""Partial re-plans on large problems (`control/partial.py`): a pass that changed few services
plans only those, on the devices the others' plan leaves, and falls back to a plan of the
whole cluster where that would not do. 110 services with two variants on 4 of 5 pools each:
880 options, a large problem (`KEEP_MIN_OPTIONS`)."""

from __future__ import annotations

from accordion.operator.api import InferenceService
from accordion.operator.control.burst import KEEP_MIN_OPTIONS, main_allocation, problem_options
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.control.partial import partial_problem
from accordion.solver import Plan, Problem
from accordion.solver.planner import plan

from .test_loop_restart import static_service
from .test_spare_kept import set_demand, set_devices, settled

SERVICES = 110
POOLS = 5


def service(i: int) -> InferenceService:
    """Service i: a big and a small variant, each profiled on 4 of the 5 pools."""
    profiles = [
        {
            "pool": f"p{(i + k) % POOLS}",
            "batches": [{"batchSize": 1, "p50Ms": 12.0}, {"batchSize": 8, "p50Ms": 40.0}],
        }
        for k in range(4)
    ]
    fast = [
        {
            "pool": p["pool"],
            "batches": [{"batchSize": 1, "p50Ms": 5.0}, {"batchSize": 8, "p50Ms": 16.0}],
        }
        for p in profiles
    ]
    return static_service(i, 80.0 + (i * 37) % 300, [("big", 80, profiles), ("small", 70, fast)])


def _main(p: Plan | None) -> dict[str, set[tuple[str, str, int]]]:
    assert p is not None
    out: dict[str, set[tuple[str, str, int]]] = {}
    for a in main_allocation(p):
        out.setdefault(a.service, set()).add((a.variant, a.pool, a.replicas))
    return out


def _accuracy(p: Plan | None) -> float:
    assert p is not None
    served = sum(s.served_qps for s in p.services)
    return sum(s.served_qps * (s.effective_accuracy or 0.0) for s in p.services) / served


async def _settled() -> tuple[World, ControlLoop, list[Problem]]:
    return await settled([service(i) for i in range(SERVICES)], POOLS, devices=50)


async def test_a_pool_change_plans_only_the_services_it_displaces() -> None:
    world, loop, calls = await _settled()
    before = _main(loop.last_plan)
    on_p0 = {s for s, rows in before.items() if any(pool == "p0" for _, pool, _ in rows)}
    assert 0 < len(on_p0) < SERVICES // 2, "the case needs a few services on p0"
    set_devices(world, "p0", 0)
    decision = loop.decide(world, DemandView())
    assert decision.planned
    planned = {s.name for s in calls[0].services}  # calls[0]: the main plan; then the spare
    assert planned == on_p0
    assert loop.partial_services == len(on_p0)
    # Its pools are the devices the kept services leave: p0 has none.
    assert {p.name: p.devices for p in calls[0].pools}["p0"] == 0
    after = _main(loop.last_plan)
    for svc, rows in before.items():
        if svc not in on_p0:
            assert after[svc] == rows, svc
        else:
            assert all(pool != "p0" for _, pool, _ in after[svc]), svc
    assert loop.last_plan is not None
    assert not [s.service for s in loop.last_plan.services if s.unserved_qps > 1e-6]
    assert len(loop.last_plan.services) == SERVICES


async def test_the_partial_plan_is_as_accurate_as_a_plan_of_everyone_here() -> None:
    world, loop, _ = await _settled()
    set_devices(world, "p0", 0)
    partial = loop.decide(world, DemandView())
    assert partial.planned
    assert loop.partial_services is not None
    problem = loop.last_problem
    assert problem is not None
    whole = plan(problem)
    assert _accuracy(loop.last_plan) >= _accuracy(whole) - 0.05


async def test_a_pool_that_grows_plans_the_whole_cluster() -> None:
    world, loop, calls = await _settled()
    set_devices(world, "p0", 80)
    # With a service's new demand: planned alone, it could not use p0's new devices for others.
    key = "default/s7"
    set_demand(world, key, (world.services[key].spec.demand.qps or 0) * 2)
    loop.decide(world, DemandView())
    assert calls
    assert len(calls[0].services) == SERVICES
    assert loop.partial_services is None


async def test_a_service_the_free_devices_cannot_serve_gets_a_plan_of_everyone() -> None:
    world, loop, calls = await _settled()
    key = "default/s3"
    set_demand(world, key, 40_000.0)  # more than the free devices serve
    loop.decide(world, DemandView())
    assert [s.name for s in calls[0].services] == [key]  # tried alone first
    assert len(calls[1].services) == SERVICES  # then the whole cluster
    assert loop.partial_services is None


async def test_one_services_new_demand_plans_that_service_alone() -> None:
    world, loop, calls = await _settled()
    before = _main(loop.last_plan)
    key = "default/s7"
    set_demand(world, key, (world.services[key].spec.demand.qps or 0) * 2)
    assert loop.decide(world, DemandView()).planned
    assert [s.name for s in calls[0].services] == [key]
    after = _main(loop.last_plan)
    assert {s for s in before if after.get(s) != before[s]} <= {key}


async def test_when_the_whole_cluster_is_planned() -> None:
    _world, loop, _ = await _settled()
    problem, last = loop.last_problem, loop.last_plan
    assert problem is not None
    assert last is not None
    one = problem.services[0].model_copy(update={"demand_qps": 1.0})
    changed = problem.model_copy(update={"services": [one, *problem.services[1:]]})
    assert partial_problem(changed, last, problem, set()) is not None
    # A service the plan in force leaves short is planned again.
    short = problem.services[1].name
    again = partial_problem(changed, last, problem, {short})
    assert again is not None
    assert short in {s.name for s in again.problem.services}
    # Nothing changed; a service went; the settings changed; no plan in force.
    assert partial_problem(problem, last, problem, set()) is None
    gone = changed.model_copy(update={"services": changed.services[:-1]})
    assert partial_problem(gone, last, problem, set()) is None
    other = changed.model_copy(
        update={"settings": problem.settings.model_copy(update={"fair_share": 0.2})}
    )
    assert partial_problem(other, last, problem, set()) is None
    assert partial_problem(changed, None, None, set()) is None
    # A small problem is planned whole.
    small = changed.model_copy(update={"services": changed.services[:3]})
    small_before = problem.model_copy(update={"services": problem.services[:3]})
    assert problem_options(small) <= KEEP_MIN_OPTIONS
    assert partial_problem(small, last, small_before, set()) is None


async def test_a_partial_plan_that_fails_gives_way_to_a_plan_of_everyone() -> None:
    world, loop, calls = await _settled()
    whole = loop.planner

    def planner(problem: Problem) -> Plan:
        if len(problem.services) < SERVICES:
            raise RuntimeError("the partial solve broke")
        return whole(problem)

    loop.planner = planner
    key = "default/s7"
    set_demand(world, key, (world.services[key].spec.demand.qps or 0) * 2)
    decision = loop.decide(world, DemandView())
    assert decision.planned
    assert loop.last_error is None
    assert loop.partial_services is None
    assert len(calls[0].services) == SERVICES
