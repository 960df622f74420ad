"""Partial re-plans on large problems: plan only the services whose inputs changed.

At 1,000 services a plan of the whole cluster takes about a second (`bench/results/
operator.md`), while most passes change little: one service's demand or spec, a pool that lost
devices. On a problem of more than `KEEP_MIN_OPTIONS` options (the planner's large problems,
as for `burst.kept_spare`) a new plan keeps the plan in force for every service that

* has the same spec as when that plan was made, demand included (within the re-plan band,
  `triggers`, an estimate stays the one the plan was made for),
* is served in full by it and has no pipeline rows,
* and whose planned replicas still fit in their pools (services in name order),

and plans only the others (new, changed, short, displaced) on the devices the kept rows
leave (`Partial.problem`). The whole cluster is planned as before when

* that partial plan fails, or cannot serve its services in full (a plan of everyone may
  move others to make room, or find the overload's fair shares),
* the cluster gained capacity (a pool grew or appeared, a service went): a plan of everyone
  could use it for accuracy,
* pools changed otherwise (cost, kind), the planner settings changed, a pool is a MIG pool
  (its layouts are the whole pool's), or nothing would be kept.

The price is accuracy: a partial plan does not move a kept service to make a better place
for a changed one. The planner's own change stage keeps running replicas wherever accuracy
allows (`PlannerSettings.accuracy_tolerance`), so a plan of everyone moves few of them too;
small problems (every Proteus trace of `bench/proteus`) are always planned whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from accordion.operator.control.burst import KEEP_MIN_OPTIONS, pools_left, problem_options
from accordion.operator.control.desired import row_devices
from accordion.solver import Exclusion, Plan, PlanRow, PoolSpec, Problem, ServicePlan
from accordion.solver.migplan import has_mig


@dataclass(frozen=True)
class Partial:
    """A partial re-plan: the problem of the services planned again, and what is kept."""

    problem: Problem
    """The services planned again, on the devices the kept rows leave."""
    rows: list[PlanRow]
    """The kept services' rows of the plan in force, their spare replicas left out (the spare
    plan places spare replicas after the main plan, `burst`)."""
    services: list[ServicePlan]
    """The kept services' summaries."""
    excluded: list[Exclusion]
    """The kept services' excluded (variant, pool) pairs."""


def partial_problem(
    problem: Problem,
    previous: Plan | None,
    previous_problem: Problem | None,
    short: Set[str],
) -> Partial | None:
    """The partial re-plan of `problem` against the plan in force (`previous`, made for
    `previous_problem`; `short`: the services it cannot serve in full), or None when the whole
    cluster is to be planned (module docstring)."""
    if (
        previous is None
        or previous_problem is None
        or previous_problem.settings != problem.settings
        or has_mig(problem)
        or has_mig(previous_problem)
        or problem_options(problem) <= KEEP_MIN_OPTIONS
        or not _pools_only_shrank(previous_problem, problem)
    ):
        return None
    now = {s.name: s for s in problem.services}
    before = {s.name: s for s in previous_problem.services}
    if before.keys() - now.keys():
        return None  # a service went: its devices are new capacity for everyone
    summaries = {s.service: s for s in previous.services}
    rows_of: dict[str, list[PlanRow]] = {}
    for row in previous.rows:
        rows_of.setdefault(row.service, []).append(row)
    free = {p.name: p.devices for p in problem.pools}
    kept_rows: list[PlanRow] = []
    kept: set[str] = set()
    for name in sorted(now):
        summary = summaries.get(name)
        rows = [_main(r) for r in rows_of.get(name, []) if r.replicas > r.spare_replicas]
        if (
            before.get(name) != now[name]
            or summary is None
            or name in short
            or any(r.pipeline for r in rows_of.get(name, []))
            or not _fits(rows, free)
        ):
            continue
        for row in rows:
            for pool, n in row_devices(row):
                free[pool] -= n
        kept_rows.extend(rows)
        kept.add(name)
    if not kept or kept == now.keys():
        return None
    return Partial(
        problem=Problem(
            pools=pools_left(problem, free),
            services=[s for s in problem.services if s.name not in kept],
            current=[a for a in problem.current if a.service not in kept],
            settings=problem.settings,
        ),
        rows=kept_rows,
        services=[
            s.model_copy(update={"spare_capacity_qps": 0.0})
            for s in previous.services
            if s.service in kept
        ],
        excluded=[e for e in previous.excluded if e.service in kept],
    )


def merge_partial(partial: Partial, plan: Plan) -> Plan:
    """The cluster's plan: the partial plan's rows and summaries beside the kept ones. Its
    solver statistics are the partial plan's: they describe the solve that ran."""
    return plan.model_copy(
        update={
            "rows": sorted(
                [*partial.rows, *plan.rows],
                key=lambda r: (r.service, r.variant, r.pool, r.pipeline or ""),
            ),
            "services": sorted([*partial.services, *plan.services], key=lambda s: s.service),
            "excluded": sorted(
                [*partial.excluded, *plan.excluded],
                key=lambda e: (e.service, e.variant, e.pool),
            ),
        }
    )


def _pools_only_shrank(before: Problem, now: Problem) -> bool:
    """Whether `now`'s pools are `before`'s, each with as many devices or fewer."""
    old: Mapping[str, PoolSpec] = {p.name: p for p in before.pools}
    if [p.name for p in now.pools] != [p.name for p in before.pools]:
        return False
    return all(
        p.devices <= old[p.name].devices
        and p.model_copy(update={"devices": 0}) == old[p.name].model_copy(update={"devices": 0})
        for p in now.pools
    )


def _main(row: PlanRow) -> PlanRow:
    """A merged plan row without its spare replicas."""
    if row.spare_replicas == 0:
        return row
    n = row.replicas - row.spare_replicas
    return row.model_copy(
        update={
            "replicas": n,
            "spare_replicas": 0,
            "capacity_qps": n * row.capacity_qps_per_replica,
        }
    )


def _fits(rows: list[PlanRow], free: Mapping[str, int]) -> bool:
    """Whether `rows` fit on the `free` devices per pool."""
    need: dict[str, int] = {}
    for row in rows:
        for pool, n in row_devices(row):
            need[pool] = need.get(pool, 0) + n
    return all(free.get(pool, 0) >= n for pool, n in need.items())
