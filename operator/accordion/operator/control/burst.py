"""The burst buffer: spare replicas on the devices a plan leaves idle.

Demand is measured every second and smoothed; a burst of several times the estimate arrives
within a second, and new replicas take a re-plan and a model load (seconds to minutes) to
serve. Devices that the plan leaves idle can hold spare replicas meanwhile: loaded, ready, and
sent nothing by weight, so they cost no accuracy in steady state. The router's fast loop sends
them the requests its planned backends cannot answer in time (`accordion.workers.fastloop`),
which absorbs a burst at once; the re-plan that follows (`ControlLoop.pass_due`) then moves
the plan itself.

The spare plan is a second call of the same planner, after the main plan: the pools less what
the main plan uses, each service's demand its estimate times its burst fraction
(`spec.demand.burst`, learned or fixed), and a looser optimality goal (a buffer needs no 0.1%
optimality; at scale polishing it would double the planning time). Its rows are merged into the
main plan's as `spare_replicas` of the same (variant, pool) worker groups, or as groups of
their own with no routed load. On large problems a new main plan keeps the spare rows that can
stay, and the spare plan places only the others (`kept_spare`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from accordion.operator.api import InferenceServiceStatus
from accordion.operator.control.desired import row_devices
from accordion.solver import (
    Allocation,
    Plan,
    PlannerSettings,
    PlanRow,
    PoolSpec,
    Problem,
    ServicePlan,
    ServiceSpec,
)
from accordion.solver.migplan import fixed_layouts, has_mig
from accordion.solver.planner import FULL_MILP_MAX_OPTIONS

SPARE_RELATIVE_GAP = 0.005
SPARE_POLISH_S = 2.0
"""The spare plan's polish limit: the backstop of its MILP stages, which end on their gap or on
`PlannerSettings.polish_nodes`. At 0.5 s 6 of 149 spare plans of two Proteus traces stopped at
the limit in their root node, so which spare a pass got turned on the machine's load; at 1.0 s
(a third of a second per stage) 2 of 152 zipf-p50 spare plans still stopped on the clock
before their 100 nodes (90 nodes in 0.33 s), on a slower VM. At 2.0 s, the main plan's, they
end on their own work."""


KEEP_MIN_OPTIONS = FULL_MILP_MAX_OPTIONS
"""Spare rows are kept across main plans (`kept_spare`) only on problems of more options than
this, the planner's large problems: there a spare plan of every service costs seconds (1,000
services: 1.3 s on a spec change, 6.5 s on a pool change). On the Proteus traces (about 150
options, a spare plan in tens of ms) keeping them cost violations: zipf-p50 0.062% -> 0.132%,
bursty 1.836% -> 2.118%, since a spare plan of every service moves spares to where the new
main plan and the wants put them best."""


def spare_settings(main: PlannerSettings) -> PlannerSettings:
    """The spare plan's settings: the main plan's, with a looser gap and a shorter polish."""
    return main.model_copy(
        update={
            "relative_gap": max(main.relative_gap, SPARE_RELATIVE_GAP),
            "polish_time_s": min(main.polish_time_s, SPARE_POLISH_S),
        }
    )


def spare_problem(
    main_problem: Problem,
    main_plan: Plan,
    burst_qps: Mapping[str, float],
    in_force: Sequence[Allocation] = (),
    kept: Sequence[PlanRow] = (),
) -> Problem | None:
    """The spare plan's problem, or None when no service wants spare capacity or no device
    is left. `burst_qps`: spare capacity wanted per service (req/s); `in_force`: the spare
    replicas that run now (`spare_allocation`), which the planner should avoid moving;
    `kept`: spare rows that stay as they are (`kept_spare`): their devices and services are
    left out."""
    # MIG pools: spare replicas go on the slices of the main plan's layouts, which stay.
    main_problem = fixed_layouts(main_problem, main_plan)
    pools = pools_left(main_problem, _free_devices(main_problem, [*main_plan.rows, *kept]))
    if not any(p.devices > 0 for p in pools):
        return None
    services: list[ServiceSpec] = []
    kept_services = {r.service for r in kept}
    planned = _replicas_by_service(main_plan)
    for svc in main_problem.services:
        want = burst_qps.get(svc.name, 0.0)
        # Spare replicas count against maxReplicas; the floor is the main plan's (met there).
        cap = svc.max_replicas
        left = None if cap is None else cap - planned.get(svc.name, 0)
        if want > 0 and (left is None or left > 0) and svc.name not in kept_services:
            services.append(
                svc.model_copy(update={"demand_qps": want, "min_replicas": 0, "max_replicas": left})
            )
    if not services:
        return None
    # Only variants that still exist (a spec change may have removed the one that had them).
    wanted = {(s.name, v.name) for s in services for v in s.variants}
    current = [a for a in in_force if (a.service, a.variant) in wanted]
    return Problem(
        pools=pools,
        services=services,
        current=current,
        settings=spare_settings(main_problem.settings),
    )


def _replicas_by_service(plan: Plan) -> dict[str, int]:
    """Replicas per service in `plan` (its rows' replicas, spare ones included)."""
    planned: dict[str, int] = {}
    for row in plan.rows:
        planned[row.service] = planned.get(row.service, 0) + row.replicas
    return planned


def pools_left(problem: Problem, free: Mapping[str, int]) -> list[PoolSpec]:
    """`problem`'s pools with only their `free` devices (what other rows leave them)."""
    return [
        PoolSpec(name=p.name, devices=free[p.name], cost_per_device=p.cost_per_device)
        for p in problem.pools
    ]


def _free_devices(problem: Problem, rows: Iterable[PlanRow]) -> dict[str, int]:
    """Devices per pool that `rows` leave free."""
    used: dict[str, int] = {}
    for row in rows:
        for pool, n in row_devices(row):  # a pipeline's: in each of its stages' pools
            used[pool] = used.get(pool, 0) + n
    return {p.name: max(0, p.devices - used.get(p.name, 0)) for p in problem.pools}


def kept_spare(
    main_problem: Problem,
    main_plan: Plan,
    burst_qps: Mapping[str, float],
    previous: Plan | None,
    previous_problem: Problem | None,
) -> list[PlanRow]:
    """The spare rows of the plan in force that stay as they are, as rows of their own.

    A new main plan (a pool change, one service's new demand) leaves most services' spare
    replicas where they can stay: planning every service's spare replicas again costs a solve
    of the whole cluster (at 1,000 services 1-6 s, most of a pass) and moves replicas the new
    plan did not need moved (a spare moved is a model loading again). A service keeps its spare
    rows when its spec and the settings are as before (the rows' capacity per replica holds),
    none is a pipeline, they still cover its spare want and not by a whole replica more, they
    fit in `maxReplicas` beside its new main replicas, and they fit on the devices the new main
    plan leaves free (services in name order). The others are planned again (`spare_problem`).
    Not on MIG pools (their slices are the layout's), and not on a problem of up to
    `KEEP_MIN_OPTIONS` options, where a spare plan of every service is cheap and better."""
    if (
        previous is None
        or previous_problem is None
        or previous_problem.settings != main_problem.settings
        or has_mig(main_problem)
        or problem_options(main_problem) <= KEEP_MIN_OPTIONS
    ):
        return []
    before = {s.name: s for s in previous_problem.services}
    now = {s.name: s for s in main_problem.services}
    free = _free_devices(main_problem, main_plan.rows)
    planned = _replicas_by_service(main_plan)
    spare_rows: dict[str, list[PlanRow]] = {}
    for row in previous.rows:
        if row.spare_replicas > 0:
            spare_rows.setdefault(row.service, []).append(row)
    kept: list[PlanRow] = []
    for name in sorted(spare_rows):
        rows, svc, want = spare_rows[name], now.get(name), burst_qps.get(name, 0.0)
        was = before.get(name)
        if (
            svc is None
            or was is None
            or not same_but_demand(was, svc)
            or any(r.pipeline for r in rows)
        ):
            continue
        capacity = sum(r.spare_replicas * r.capacity_qps_per_replica for r in rows)
        smallest = min(r.capacity_qps_per_replica for r in rows)
        if want <= 0 or capacity < want or capacity - smallest >= want:
            continue
        replicas = sum(r.spare_replicas for r in rows)
        if svc.max_replicas is not None and planned.get(name, 0) + replicas > svc.max_replicas:
            continue
        if any(free.get(r.pool, 0) < r.spare_replicas for r in rows):
            continue
        for r in rows:
            free[r.pool] -= r.spare_replicas
            kept.append(
                r.model_copy(
                    update={
                        "replicas": r.spare_replicas,
                        "spare_replicas": 0,
                        "capacity_qps": r.spare_replicas * r.capacity_qps_per_replica,
                        "routed_qps": 0.0,
                    }
                )
            )
    return kept


def problem_options(problem: Problem) -> int:
    """(variant, pool) pairs the problem's services are profiled on: the planner's options,
    pipelines left out."""
    return sum(len(v.profiles) for s in problem.services for v in s.variants)


def same_but_demand(a: ServiceSpec, b: ServiceSpec) -> bool:
    """Whether two services' specs are equal but for their demand (without copying them: at
    1,000 services a copy of each took a tenth of a pass)."""
    return type(a) is type(b) and all(
        v == b.__dict__[k] for k, v in a.__dict__.items() if k != "demand_qps"
    )


def merge_spare(main: Plan, spare: Plan | None, kept: Sequence[PlanRow] = ()) -> Plan:
    """The main plan with the spare plan's replicas and the `kept` spare rows added as
    `spare_replicas` (no routed load). Rows are one per pipeline too: two pipelines of a
    variant may start on the same pool."""
    rows: dict[tuple[str, str, str, str], PlanRow] = {
        (r.service, r.variant, r.pool, r.pipeline or ""): r for r in main.rows
    }
    spare_capacity: dict[str, float] = {}
    for r in [*(spare.rows if spare is not None else []), *kept]:
        if r.replicas <= 0:
            continue
        key = (r.service, r.variant, r.pool, r.pipeline or "")
        spare_capacity[r.service] = spare_capacity.get(r.service, 0.0) + r.capacity_qps
        have = rows.get(key)
        if have is None:
            rows[key] = r.model_copy(update={"routed_qps": 0.0, "spare_replicas": r.replicas})
        else:
            n = have.replicas + r.replicas
            rows[key] = have.model_copy(
                update={
                    "replicas": n,
                    "spare_replicas": have.spare_replicas + r.replicas,
                    "capacity_qps": n * have.capacity_qps_per_replica,
                    # A pipeline's spare replicas take devices in each of its stages.
                    "stages": [
                        st.model_copy(update={"replicas": st.replicas + extra.replicas})
                        for st, extra in zip(have.stages, r.stages, strict=True)
                    ],
                }
            )
    services: list[ServicePlan] = [
        s.model_copy(update={"spare_capacity_qps": spare_capacity.get(s.service, 0.0)})
        for s in main.services
    ]
    return main.model_copy(
        update={
            "rows": [rows[k] for k in sorted(rows)],
            "services": services,
            "stats": main.stats.model_copy(
                update={
                    "solve_time_s": main.stats.solve_time_s
                    + (spare.stats.solve_time_s if spare is not None else 0.0)
                }
            ),
        }
    )


def spare_allocation(plan: Plan) -> list[Allocation]:
    """The spare replicas of a merged plan (a spare pipeline is named as that pipeline, not
    as a whole variant on its first pool: the planner keys running replicas by pipeline)."""
    return _allocation(plan, lambda r: r.spare_replicas)


def status_spare_allocation(
    statuses: Iterable[tuple[str, InferenceServiceStatus]],
) -> list[Allocation]:
    """The spare replicas that the services' statuses record (`status.plan[].spareReplicas`):
    after an operator restart, the split of what runs into planned and spare replicas, which
    the running Deployments do not hold."""
    return [
        Allocation(
            service=service,
            variant=row.variant,
            pool=row.pool,
            replicas=row.spare_replicas,
            pipeline=row.pipeline,
        )
        for service, status in statuses
        for row in status.plan
        if row.spare_replicas > 0
    ]


def main_allocation(plan: Plan) -> list[Allocation]:
    """The main plan's replicas of a merged plan (spare replicas left out)."""
    return _allocation(plan, lambda r: r.replicas - r.spare_replicas)


def _allocation(plan: Plan, replicas: Callable[[PlanRow], int]) -> list[Allocation]:
    """The rows of `plan` as allocations of `replicas(row)` replicas each, where above 0."""
    return [
        Allocation(
            service=r.service, variant=r.variant, pool=r.pool, replicas=n, pipeline=r.pipeline
        )
        for r in plan.rows
        if (n := replicas(r)) > 0
    ]
