"""MIG pools in the planner: every GPU's layout is chosen jointly with variants and routing.

A MIG pool's slices exist only once its GPUs are split, and how they are split is a decision
as much as which variant runs where: a small model wastes a whole GPU, a large one may miss its
SLO on a small slice. So the planner expands a MIG pool of G GPUs into slice sub-pools
`<pool>/<profile>` (`mig.slice_pool`), the pools the variants' profiles name, and adds one
integer variable per allowed layout l, m[l] = how many GPUs take layout l:

    gpus        sum_l m[l] <= G
    slices      sum_{o on <pool>/<profile>} n[o] <= sum_l count_l(profile) * m[l]

on top of the usual model (`model`). That MILP is solved for the planner's first two stages
(served, then accuracy: the layouts serve what the whole-GPU plan serves, and more), then
relabels as few GPUs as it can (relabelling drains a GPU), then uses as few GPUs as it can.

Hysteresis (`LAYOUT_HYSTERESIS`, no flapping): after the served stage, the same stage is solved
with every GPU held at its reference layout (its target in the plan in force, `MigSpec.target`,
else its layout now; a GPU with none is free). When that serves at most the margin less, the
reference stays for the later stages: layouts change only for a gain worth a drain, and a GPU
whose target is still chosen keeps it (`assign`), so a drain under way is not cancelled.

With the layout counts fixed, each sub-pool is an ordinary pool of fixed size, and the ordinary
planner plans the whole problem (rounding, polishing, additions, cost, change): its plan is at
least as good on served and accuracy as the layout MILP's, whose replicas fit those sub-pools.
There, a slice costs its pool's cost_per_device times compute slices / 7; the plan's cost
counts every GPU given a layout at its full cost. Finally each GPU gets its layout, GPUs that
keep theirs first, and a placement of its slices that obeys the published rules (`mig`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from accordion.solver.capacity import options
from accordion.solver.mig import (
    COMPUTE_SLICES,
    GPU_MODELS,
    Layout,
    MigSpec,
    layout_name,
    layout_of,
    place,
    slice_pool,
)
from accordion.solver.model import StagedModel
from accordion.solver.plan import GpuLayout, Plan, SlicePlacement
from accordion.solver.problem import PoolSpec, Problem

LAYOUT_TIME_SHARE = 0.5
"""Of the planner's time limit, the share the layout MILP may take; the rest plans replicas."""
LAYOUT_NODE_FACTOR = 10
"""The layout MILP's node limit, in `PlannerSettings.polish_nodes`: the ordinary planner's MILP
stages polish a rounded LP solution inside a window around it, the layout MILP searches from
nothing. At 100 nodes it stopped short of the layouts that serve the whole demand (the MIG
benchmark's 10 GPUs: 99.89% served, against 100% at 300 nodes or more, in the same time)."""
Start = dict[tuple[str, str, str], int]
"""Replicas per (service, variant, pool) of the layout MILP's solution (`choose_layouts`)."""
LAYOUT_HYSTERESIS = 0.05
"""Layout hysteresis: the reference layouts (the plan in force's targets, `MigSpec.target`,
else the current ones) are kept unless free layouts serve more by this share of the
priority-weighted demand (the served stage's objective, its fair-share floor included: counted
in total QPS alone, a relabel that lets a starved tenant be served at about the same total
would never pass). Why: a relabel drains a GPU (its
share of capacity is lost for the drain, the MIG manager's work and the start-ups), and under
a demand estimate that rises every pass the served optimum moves every pass; without a margin
the targets follow it and GPUs are drained and released again a pass later (flapping)."""


@dataclass(frozen=True)
class _Group:
    """One MIG pool of the problem: its GPUs, allowed layouts and slice sub-pools."""

    pool: PoolSpec
    mig: MigSpec
    layouts: tuple[Layout, ...]
    current: tuple[int, ...]
    """GPUs per allowed layout now."""
    reference: tuple[int, ...] | None
    """GPUs per allowed layout of the reference (`_reference`); None when some GPU's reference
    layout is not allowed (no hysteresis then)."""


def has_mig(problem: Problem) -> bool:
    """Whether any pool of `problem` is a MIG pool."""
    return any(pool.mig is not None for pool in problem.pools)


def _groups(problem: Problem) -> list[_Group]:
    groups: list[_Group] = []
    for pool in problem.pools:
        if pool.mig is None:
            continue
        layouts = pool.mig.allowed()
        now = [layout_of(c) for c in pool.mig.current]
        ref = _reference(pool)
        groups.append(
            _Group(
                pool,
                pool.mig,
                layouts,
                tuple(sum(1 for c in now if c == lay) for lay in layouts),
                None
                if any(lay and lay not in layouts for lay in ref)
                else tuple(sum(1 for c in ref if c == lay) for lay in layouts),
            )
        )
    return groups


def _reference(pool: PoolSpec) -> list[Layout]:
    """Per GPU of a MIG pool, the layout the hysteresis keeps: its target in the plan in force
    (`MigSpec.target`: a reconfiguration under way is not cancelled for a small gain), else its
    layout now; () for a GPU with neither."""
    assert pool.mig is not None
    now = [layout_of(c) for c in pool.mig.current]
    target = pool.mig.target or []
    out: list[Layout] = []
    for gpu in range(pool.devices):
        aim = target[gpu] if gpu < len(target) else None
        out.append(layout_of(aim) if aim is not None else now[gpu] if gpu < len(now) else ())
    return out


def expand(problem: Problem, counts: list[list[int]] | None = None) -> Problem:
    """`problem` with every MIG pool replaced by its slice sub-pools, one per profile.

    A sub-pool has as many devices as the layouts give: `counts[g][l]` GPUs of MIG pool g take
    its allowed layout l; without `counts`, as many as any one allowed layout has on every GPU.
    """
    slices: list[dict[str, int]] = []
    for g, group in enumerate(_groups(problem)):
        per_layout = {
            name: [dict(layout).get(name, 0) for layout in group.layouts]
            for name in GPU_MODELS[group.mig.gpu_model]
        }
        slices.append(
            {
                name: group.pool.devices * max(n, default=0)
                if counts is None
                else sum(a * b for a, b in zip(n, counts[g], strict=True))
                for name, n in per_layout.items()
            }
        )
    return with_slices(problem, slices)


def with_slices(problem: Problem, slices: list[dict[str, int]]) -> Problem:
    """`problem` with MIG pool g replaced by one sub-pool per profile of `slices[g][profile]`
    devices, each at its pool's cost per device times compute slices / 7."""
    pools: list[PoolSpec] = []
    g = 0
    for pool in problem.pools:
        if pool.mig is None:
            pools.append(pool)
            continue
        for name, profile in GPU_MODELS[pool.mig.gpu_model].items():
            pools.append(
                PoolSpec(
                    name=slice_pool(pool.name, name),
                    devices=slices[g].get(name, 0),
                    cost_per_device=pool.cost_per_device * profile.compute_slices / COMPUTE_SLICES,
                )
            )
        g += 1
    return Problem(
        pools=pools, services=problem.services, current=problem.current, settings=problem.settings
    )


def in_service_slices(group_pool: PoolSpec, given: list[GpuLayout]) -> dict[str, int]:
    """Per profile, the slices of a MIG pool that can take workers now: each GPU's
    `mig.in_service` layout where it is known ({} while the GPU is drained or relabelled),
    else the layout the plan gives it (`given`), taken as applied.

    Why: a GPU the MIG manager is working on serves nothing for a minute or more; a plan that
    counts its new slices routes work to replicas that cannot start, while slices elsewhere
    (on GPUs that keep their layout, often idle after a shift) could serve it. So the replicas
    are planned on what exists (make before break: the drained GPU's work is placed elsewhere
    before its workers are evicted), and the layouts for all GPUs, as before."""
    assert group_pool.mig is not None
    now = group_pool.mig.in_service
    planned = {g.gpu: Counter(s.profile for s in g.slices) for g in given}
    out: Counter[str] = Counter()
    for gpu in range(group_pool.devices):
        known = now[gpu] if now is not None and gpu < len(now) else None
        out.update(planned.get(gpu, Counter()) if known is None else known)
    return dict(out)


def choose_layouts(problem: Problem, deadline: float) -> tuple[list[list[int]], Start] | None:
    """GPUs per allowed layout of every MIG pool, from the joint MILP, and the replicas of its
    solution (whole variants; the ordinary planner's start on those layouts); None when its
    served stage finds nothing in time."""
    groups = _groups(problem)
    expanded = expand(problem)
    opts, _ = options(expanded)
    model = StagedModel(
        expanded,
        opts,
        {},
        integer=True,
        node_limit=LAYOUT_NODE_FACTOR * problem.settings.polish_nodes,
    )
    solver = model.solver
    inf = solver.infinity()
    pool_index = {pool.name: p for p, pool in enumerate(expanded.pools)}
    # A replica takes one device of each pool in devices() (a pipeline: several).
    by_pool: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for k, o in enumerate(opts):
        for p, c in Counter(o.devices()).items():
            by_pool[p].append((k, c))
    m: list[list[pywraplp.Variable]] = []
    relabels: list[pywraplp.Variable] = []
    gpu_cost: tuple[list[pywraplp.Variable], list[float]] = ([], [])
    mig_pools: set[int] = set()
    for g, group in enumerate(groups):
        ms = [solver.IntVar(0, group.pool.devices, f"m{g}_{i}") for i in range(len(group.layouts))]
        m.append(ms)
        gpus = solver.Constraint(-inf, group.pool.devices)
        for var in ms:
            gpus.SetCoefficient(var, 1.0)
            gpu_cost[0].append(var)
            gpu_cost[1].append(group.pool.cost_per_device)
        for name in GPU_MODELS[group.mig.gpu_model]:
            p = pool_index[slice_pool(group.pool.name, name)]
            mig_pools.add(p)
            slices = solver.Constraint(-inf, 0.0)  # sum n - sum count * m <= 0
            for k, c in by_pool.get(p, []):
                slices.SetCoefficient(model.n[k], float(c))
            for var, layout in zip(ms, group.layouts, strict=True):
                slices.SetCoefficient(var, -float(dict(layout).get(name, 0)))
        for i, var in enumerate(ms):
            d = solver.NumVar(0, inf, f"relabel{g}_{i}")  # d >= m - current
            keep = solver.Constraint(-float(group.current[i]), inf)
            keep.SetCoefficient(d, 1.0)
            keep.SetCoefficient(var, -1.0)
            relabels.append(d)
    for k, o in enumerate(opts):
        whole = sum(expanded.pools[p].cost_per_device for p in o.devices() if p not in mig_pools)
        if whole > 0:
            gpu_cost[0].append(model.n[k])
            gpu_cost[1].append(whole)
    stages = [
        (model.served_terms(), True),
        (model.accuracy_terms(), True),
        ((relabels, [1.0] * len(relabels), 0.0), False),
        ((gpu_cost[0], gpu_cost[1], 0.0), False),
    ]
    chosen: list[list[int]] | None = None
    start: Start = {}
    for i, (terms, maximize) in enumerate(stages):
        now = time.perf_counter()
        outcome = model.solve(
            terms,
            maximize,
            now + (deadline - now) / (len(stages) - i),
            None,
            problem.settings.relative_gap,
        )
        if outcome is None:
            break
        chosen = [[round(var.solution_value()) for var in ms] for ms in m]
        if i == 0:
            kept = _hysteresis(model, m, groups, chosen, outcome[0], deadline, len(stages))
            if kept is not None:
                chosen, outcome = kept
        start = {
            (expanded.services[o.service].name, o.variant, expanded.pools[o.pool].name): n
            for o, var in zip(opts, model.n, strict=True)
            if o.pipeline_id() is None and (n := round(var.solution_value())) > 0
        }
        if i == 1:
            model.keep_accuracy_per_service(model.solution())
        elif i + 1 < len(stages):
            model.keep(terms, outcome[0], maximize)
    return None if chosen is None else (chosen, start)


def _hysteresis(
    model: StagedModel,
    m: list[list[pywraplp.Variable]],
    groups: list[_Group],
    free: list[list[int]],
    served: float,
    deadline: float,
    stages: int,
) -> tuple[list[list[int]], tuple[float, float, str]] | None:
    """The layout hysteresis (`LAYOUT_HYSTERESIS`), after the served stage found `free`
    serving `served`: serve with every GPU keeping its reference layout (GPUs with none may
    take any: giving an unpartitioned GPU a layout drains nothing); when that serves at most
    the margin less, those bounds stay for the later stages and (its layouts, outcome) is
    returned; else None (the layouts are free again)."""
    reference = [g.reference for g in groups]
    if any(r is None for r in reference) or [list(r or ()) for r in reference] == free:
        return None
    terms = model.served_terms()
    for ms, ref, group in zip(m, reference, groups, strict=True):
        for var, n in zip(ms, ref or (), strict=True):
            var.SetBounds(float(n), float(group.pool.devices))
    now = time.perf_counter()
    outcome = model.solve(
        terms, True, now + (deadline - now) / stages, None, model.problem.settings.relative_gap
    )
    if outcome is not None and served - outcome[0] <= LAYOUT_HYSTERESIS * terms[2]:
        return [[round(var.solution_value()) for var in ms] for ms in m], outcome
    for ms, group in zip(m, groups, strict=True):
        for var in ms:
            var.SetBounds(0.0, float(group.pool.devices))
    return None


def assign(group_pool: PoolSpec, layouts: tuple[Layout, ...], counts: list[int]) -> list[GpuLayout]:
    """Give each GPU of a MIG pool its layout: GPUs whose target in the plan in force is
    still chosen keep it (a reconfiguration under way goes on), then GPUs whose layout now is
    still chosen keep it, unpartitioned GPUs take the new ones before GPUs that must be
    relabelled."""
    assert group_pool.mig is not None
    mig = group_pool.mig
    left = {layout: n for layout, n in zip(layouts, counts, strict=True) if n > 0}
    now = [layout_of(c) for c in mig.current]
    now += [()] * (group_pool.devices - len(now))
    given: dict[int, Layout] = {}
    for keep in (_reference(group_pool), now):
        for gpu, layout in enumerate(keep):
            if gpu not in given and left.get(layout, 0) > 0:
                given[gpu] = layout
                left[layout] -= 1
    pending = [layout for layout in sorted(left, key=layout_name) for _ in range(left[layout])]
    order = sorted(
        (gpu for gpu in range(len(now)) if gpu not in given), key=lambda g: (now[g] != (), g)
    )
    for gpu, layout in zip(order, pending, strict=False):
        given[gpu] = layout
    out: list[GpuLayout] = []
    for gpu, layout in sorted(given.items()):
        placements = place(mig.gpu_model, layout)
        assert placements is not None  # allowed layouts are valid (MigSpec)
        out.append(
            GpuLayout(
                pool=group_pool.name,
                gpu=gpu,
                layout=layout_name(layout),
                slices=[SlicePlacement(profile=p.profile, start=p.start) for p in placements],
            )
        )
    return out


def plan_with_layouts(
    problem: Problem, plan_fixed: Callable[[Problem, Start | None], Plan]
) -> Plan:
    """Plan a problem with MIG pools: layouts first (`choose_layouts`), then the ordinary
    planner `plan_fixed` on the sub-pools those layouts give, with the layout MILP's replicas
    as a start it takes where they beat its own (so the plan is at least as good)."""
    started = time.perf_counter()
    limit = problem.settings.time_limit_s
    groups = _groups(problem)
    chosen = choose_layouts(problem, started + LAYOUT_TIME_SHARE * limit)
    start: Start | None = None
    if chosen is None:
        # No layout solution in time: keep the layouts the GPUs have (their slices still run).
        counts = [list(group.current) for group in groups]
    else:
        counts, start = chosen
    remaining = max(limit - (time.perf_counter() - started), LAYOUT_TIME_SHARE * limit)
    layouts = [
        gpu
        for group, n in zip(groups, counts, strict=True)
        for gpu in assign(group.pool, group.layouts, n)
    ]
    slices = [
        in_service_slices(group.pool, [g for g in layouts if g.pool == group.pool.name])
        for group in groups
    ]
    fixed = with_slices(problem, slices).model_copy(
        update={
            "settings": problem.settings.model_copy(
                update={
                    "time_limit_s": remaining,
                    "polish_time_s": min(problem.settings.polish_time_s, remaining),
                }
            )
        }
    )
    planned = plan_fixed(fixed, start)
    # The plan's cost: whole GPUs given a layout, instead of the slices the rows take.
    slice_cost = {pool.name: pool.cost_per_device for pool in fixed.pools} | {
        pool.name: 0.0 for pool in problem.pools
    }
    taken = sum(
        stage.replicas * slice_cost[stage.pool] for row in planned.rows for stage in row.stages
    ) + sum(row.replicas * slice_cost[row.pool] for row in planned.rows if not row.stages)
    cost = (
        planned.stats.cost
        - taken
        + sum(
            group.pool.cost_per_device
            for group in groups
            for gpu in layouts
            if gpu.pool == group.pool.name
        )
    )
    stats = planned.stats.model_copy(
        update={"cost": cost, "solve_time_s": time.perf_counter() - started}
    )
    return planned.model_copy(update={"layouts": layouts, "stats": stats})


def fixed_layouts(problem: Problem, plan: Plan) -> Problem:
    """`problem` with every MIG pool replaced by the slice sub-pools of the layouts `plan`
    gave its GPUs (those in service, `in_service_slices`): a plain problem, for planning more
    on top of that plan without changing a layout (spare replicas). `problem` itself when it
    has no MIG pool."""
    if not has_mig(problem):
        return problem
    slices = [
        in_service_slices(group.pool, [g for g in plan.layouts if g.pool == group.pool.name])
        for group in _groups(problem)
    ]
    return with_slices(problem, slices)
