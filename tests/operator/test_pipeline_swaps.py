"""Pipelines in the loop's device accounting: model swaps (`control.swaps.swapped_replicas`)
and the old replicas that go to make room (`ControlLoop._make_room`).

A pipeline row names its first stage's pool only (`PlanRow.pool`); its worker groups are one
per stage, each on its own pool, and two pipelines of a variant may start on the same pool
(the twin of the burst buffer's bug, `test_burst_pipelines.py`). Counted by (variant, first
pool), a re-plan from one pipeline to another that starts on the same pool swaps nothing, and
a pipeline's later stage never asks for the device a serving replica holds; looked up by a
whole variant's worker key, a pipeline's spare replicas are never found spare.
"""

from __future__ import annotations

from accordion.operator.control.desired import spare_by_group, worker_specs
from accordion.operator.control.loop import ControlLoop, RunningWorker, World
from accordion.operator.control.swaps import swapped_replicas
from accordion.solver import Plan, PlanRow, ServicePlan, SolverStats
from accordion.solver.plan import PlanStage

from .test_loop import NO_DRAIN, Clock, plan_row, pool, service
from .test_pipelines_loop import _service

SVC = "default/svc"
OTHER = "default/other"


def _stage(pool_name: str, first: str, devices: int, per_replica: int = 1) -> PlanStage:
    return PlanStage(
        pool=pool_name,
        first=first,
        last=first,
        replicas=devices,
        devices_per_replica=per_replica,
        max_batch_size=1,
        latency_s=0.03,
        output_bytes=1000 if first == "a" else 0,
    )


def _pipeline(
    first: str,
    second: str,
    replicas: int,
    spare: int = 0,
    per_replica: tuple[int, int] = (1, 1),
    qps: float = 30.0,
) -> PlanRow:
    """`replicas` pipeline replicas of svc's variant big (`qps` each), part a on `first`, b on
    `second`, each stage taking `per_replica` devices of its pool per pipeline replica."""
    a, b = per_replica
    return plan_row(
        SVC,
        "big",
        replicas,
        qps,
        qps * (replicas - spare),
        spare=spare,
        pool_name=first,
        pipeline=f"a..a@{first}*{a}>b..b@{second}*{b}",
        stages=[_stage(first, "a", a * replicas, a), _stage(second, "b", b * replicas, b)],
    )


def _whole(svc: str, pool_name: str, replicas: int, variant: str = "big") -> PlanRow:
    """`replicas` whole replicas (50 req/s each, all routed), accuracy 80 for either variant."""
    return plan_row(
        svc, variant, replicas, 50.0, 50.0 * replicas, pool_name=pool_name, accuracy=80.0
    )


def _plan(*rows: PlanRow, demand: float = 100.0) -> Plan:
    stats = SolverStats(
        status="OPTIMAL",
        solver="test",
        solve_time_s=0.0,
        served_qps=0.0,
        accuracy_term=0.0,
        cost=0.0,
        change=0,
        gap=0.0,
    )
    services = [
        ServicePlan(
            service=SVC,
            demand_qps=demand,
            served_qps=0.0,
            unserved_qps=demand,
            capacity_qps=0.0,
            effective_accuracy=None,
            floor_met=False,
        )
    ]
    return Plan(rows=list(rows), services=services, stats=stats)


def test_a_pipeline_replacing_one_that_starts_on_the_same_pool_swaps_its_devices() -> None:
    # The old plan: 2 pipelines lo>hi; the new: 2 lo>mid. Both start on lo, which the old
    # ones fill: the new ones' first stages need both lo devices (mid's are free).
    devices = {"lo": 2, "hi": 2, "mid": 2}
    old = _plan(_pipeline("lo", "hi", 2))
    new = _plan(_pipeline("lo", "mid", 2))
    assert swapped_replicas(new, old, devices) == 2
    # The same plan again swaps nothing; neither does adding a second pipeline on free
    # devices beside the first.
    assert swapped_replicas(old, old, devices) == 0
    both = _plan(_pipeline("lo", "hi", 1), _pipeline("lo", "mid", 1))
    one = _plan(_pipeline("lo", "hi", 1))
    assert swapped_replicas(both, one, devices) == 0


def test_a_later_stage_asks_for_the_device_a_serving_replica_holds() -> None:
    # The old plan serves a whole replica on hi (its only device); the new one runs part a on
    # lo (free) and part b on hi: one swap, on hi.
    devices = {"lo": 1, "hi": 1}
    old = _plan(_whole(SVC, "hi", 1))
    new = _plan(_pipeline("lo", "hi", 1))
    assert swapped_replicas(new, old, devices) == 1
    # A spare pipeline replica that becomes a planned one loads nothing.
    spare = _plan(_pipeline("lo", "hi", 1, spare=1))
    assert swapped_replicas(new, spare, {"lo": 1, "hi": 1}) == 0


def test_a_pipelines_spare_replicas_go_first_to_make_room() -> None:
    """gpu's 4 devices: a pipeline's second stage holds 2, one of them a spare replica's, and
    another service's whole variant 2. The new plan keeps 1 of each and wants 1 of the other
    service's small variant there: one device must be freed, and a spare replica (no load
    routed to it) goes before a routed one, whatever the services' names and accuracies."""
    svc = _service().model_copy(deep=True)
    # `_service`'s pools are hi and lo; here hi is called gpu, as `service`'s profiles are.
    for v in svc.spec.variants:
        for st in v.stages:
            for prof in st.profiles:
                if prof.pool == "hi":
                    prof.pool = "gpu"
    pools = {"gpu": pool("gpu", devices=4), "lo": pool("lo", devices=3)}
    world = World(services={SVC: svc, OTHER: service("other")}, pools=pools)
    running = [_pipeline("lo", "gpu", 2, spare=1), _whole(OTHER, "gpu", 2)]
    for key, spec in worker_specs(running, world.services, pools).items():
        world.workers[key] = RunningWorker(spec, spec.replicas)
    assert len(world.workers) == 3
    wanted = [_pipeline("lo", "gpu", 1), _whole(OTHER, "gpu", 1), _whole(OTHER, "gpu", 1, "small")]
    targets = worker_specs(wanted, world.services, pools)
    loop = ControlLoop(NO_DRAIN, clock=Clock())
    loop.previous_plan = _plan(*running)
    stage2 = next(k for k in world.workers if k.stage == 1)
    assert spare_by_group(loop.previous_plan.rows) == {
        stage2: 1,
        stage2.model_copy(update={"stage": 0, "pool": "lo"}): 1,
    }
    assert loop._make_room(world, targets, {}) == {stage2: 1}


def _wide(first: str, second: str, per_replica: tuple[int, int]) -> PlanRow:
    """One pipeline replica of svc's big (60 req/s), `per_replica` devices per stage."""
    return _pipeline(first, second, 1, per_replica=per_replica, qps=60.0)


def _swap_world(old: PlanRow) -> tuple[World, ControlLoop]:
    """Pools lo (1 device) and hi (2), both full with `old`'s pipeline, all of it ready."""
    svc = _service().model_copy(deep=True)
    pools = {"hi": pool("hi", devices=2), "lo": pool("lo", devices=1)}
    world = World(services={SVC: svc}, pools=pools)
    for key, spec in worker_specs([old], world.services, pools).items():
        world.workers[key] = RunningWorker(spec, spec.replicas)
    loop = ControlLoop(NO_DRAIN, clock=Clock())
    loop.previous_plan = _plan(old)
    return world, loop


def test_a_pipelines_later_stage_is_not_rolled_away_from_its_only_pipeline() -> None:
    """The service's one pipeline replica (a on lo's device, b on both of hi's) is replaced by
    another pipeline on the same full pools, as a re-plan in overload does. One device of the
    old pipeline's second stage takes the whole pipeline replica with it: it is the service's
    last ready capacity, so nothing goes (the old pipeline keeps serving). Counted at the
    first stage, the old pipeline kept 60 req/s ready with one of b's devices gone, so one
    went (a rolling step), and the service served nothing while the new pipeline waited for
    lo's device, which the broken old one's first stage held as the "last ready" replica."""
    world, loop = _swap_world(_wide("lo", "hi", (1, 2)))
    targets = worker_specs([_wide("hi", "lo", (2, 1))], world.services, world.pools)
    summaries = {SVC: _plan(demand=50.0).services[0]}
    assert loop._make_room(world, targets, summaries) == {}


def test_the_stages_of_a_broken_pipeline_go_first_to_make_room() -> None:
    """The old pipeline's second stage is down to one of its two devices: no pipeline replica
    is ready end to end, so its stages' ready replicas serve nothing and go for the new
    pipeline's devices at once (as replicas that are not ready do)."""
    old = _wide("lo", "hi", (1, 2))
    world, loop = _swap_world(old)
    second = next(k for k in world.workers if k.stage == 1)
    world.workers[second] = RunningWorker(world.workers[second].spec.with_replicas(1), 1)
    targets = worker_specs([_wide("hi", "lo", (2, 1))], world.services, world.pools)
    summaries = {SVC: _plan(demand=50.0).services[0]}
    first = next(k for k in world.workers if k.stage == 0)
    assert loop._make_room(world, targets, summaries) == {first: 1, second: 1}
