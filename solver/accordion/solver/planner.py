"""The planner: from a `Problem` to a `Plan`, lexicographically (see `model` for the math).

Solving the MILP from scratch is slow at thousands of devices (seconds to minutes), yet its LP
relaxation is nearly integral there: replicas are many per option and rounding moves each by
at most one. So the planner

1. solves the stages as an LP (GLOP, milliseconds), which also bounds the optimum: the
   reported gap of the served and accuracy stages is measured against it;
2. rounds the LP's replica counts (`rounding`), routes load within them and releases what the
   routing leaves idle (a second LP);
3. only when that misses the gap goal: on large problems, dives from the LP (`diving`) and
   repairs the rounding's and the dive's shortfalls with faster variants of the short
   services (`rounding.repair_deficits`: a greedy fill from nothing serves more, at far less
   accuracy, and serving more wins); then, if still short, polishes with the MILP (SCIP) from
   the best so far, for at most `polish_time_s`. Small problems get the full MILP (rounding a
   handful of replicas can starve a small service), large ones a window around the LP's
   counts and the incumbent (`window`), where the accuracy stage may give up served within
   the gap goal, as candidates within it tie.

Deterministic: the same problem gives the same plan, unless a polish runs out of time.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from accordion.solver.bounds import apply_bounds
from accordion.solver.capacity import Option, options
from accordion.solver.diving import dive
from accordion.solver.migplan import Start, has_mig, plan_with_layouts
from accordion.solver.model import MAXIMIZE, STAGES, Solution, StagedModel, StageResult
from accordion.solver.pipelines import pipeline_options, plan_stages
from accordion.solver.plan import Exclusion, Plan, PlanRow, ServicePlan, SolverStats
from accordion.solver.problem import Problem
from accordion.solver.relabel import keep_in_place
from accordion.solver.rounding import repair_deficits, round_replicas

FULL_MILP_MAX_OPTIONS = 400
"""Up to this many options, the polishing MILP may move replica counts freely."""
WINDOW = 1
"""Above that, it may move them this far below the LP's floor or above its ceiling."""
SMALL_GAP = 1e-6
"""Gap below which a small problem's rounding counts as optimal."""


def _current_by_option(problem: Problem, opts: list[Option]) -> tuple[dict[int, int], int]:
    """Running replicas per option index, and replicas of runs no option covers any more."""
    index = {
        (
            problem.services[o.service].name,
            o.variant,
            problem.pools[o.pool].name,
            o.pipeline_id(),
        ): k
        for k, o in enumerate(opts)
    }
    current: dict[int, int] = defaultdict(int)
    orphaned = 0
    for alloc in problem.current:
        k = index.get((alloc.service, alloc.variant, alloc.pool, alloc.pipeline))
        if k is None:
            orphaned += alloc.replicas
        else:
            current[k] += alloc.replicas
    return dict(current), orphaned


def plan(problem: Problem) -> Plan:
    """Plan replicas and routing for `problem`.

    Pure, and deterministic as long as no MILP stage of the polish runs into its share of
    `polish_time_s`: stages end on their gap or after `polish_nodes` nodes (and at most
    `model.ROOT_CUT_ROUNDS` cut rounds at the root), and the clock is the backstop of a machine
    too slow to get there (a stage stopped by it keeps what it found by then). Never raises on
    infeasible demand: the shortfall is reported per service. Invalid input is rejected
    earlier, when the `Problem` is built.
    """
    if has_mig(problem):
        # MIG pools: each GPU's layout is chosen first, jointly (`migplan`).
        return plan_with_layouts(problem, _plan_pools)
    return _plan_pools(problem, None)


def _plan_pools(problem: Problem, start: Start | None) -> Plan:
    """`plan` for a problem whose pools are all of fixed size (no MIG pool). `start`: replicas
    per (service, variant, pool) of another solve of the same problem (the MIG layout MILP's),
    a candidate like the rounding's."""
    started = time.perf_counter()
    opts, excluded = options(problem)
    # The time limit is the solver's: the batching model's tables (`queueing`), built once per
    # (profile, batch cap, SLO), may take seconds the first time.
    deadline = time.perf_counter() + problem.settings.time_limit_s
    opts += pipeline_options(problem)  # variants that list their model's parts (`pipelines`)
    current, orphaned = _current_by_option(problem, opts)

    relaxed = StagedModel(problem, opts, current, integer=False)
    lp, lp_result = relaxed.run_stages(deadline, None)
    if opts and (not lp_result.statuses or lp_result.statuses[0] == "NOT_SOLVED"):
        # Without the served stage there is no plan: say so; never a plan of zeros.
        return _no_solution(problem, opts, excluded, lp_result, started)
    rounded = round_replicas(problem, opts, lp.n, current)
    best, result = _routed(problem, opts, current, rounded, deadline)
    gap = _gap(lp_result, result)
    small = len(opts) <= FULL_MILP_MAX_OPTIONS
    tolerance = SMALL_GAP if small else problem.settings.relative_gap
    running = [current.get(k, 0) for k in range(len(opts))]
    kept: StageResult | None = None  # what the current allocation serves of this demand
    if current and _fits(problem, opts, running):
        # Re-plans are mostly small changes: what runs now wins every tie within the gap goal.
        candidate, candidate_result = _routed(problem, opts, current, running, deadline)
        kept = candidate_result if candidate_result.values else None
        if len(candidate_result.values) == len(STAGES) and not _better(
            result, candidate_result, tolerance
        ):
            best, result = candidate, candidate_result
            gap = _gap(lp_result, result)
    if gap > problem.settings.relative_gap:
        # Where replicas are big next to each service's demand, the LP spreads fractions of
        # them over many services and rounding down strands the rest: fill greedily instead.
        greedy = round_replicas(problem, opts, [0.0] * len(opts), current)
        candidate, candidate_result = _routed(problem, opts, current, greedy, deadline)
        if len(candidate_result.values) == len(STAGES) and _better(
            candidate_result, result, tolerance
        ):
            best, result = candidate, candidate_result
            gap = _gap(lp_result, result)
    dived: list[int] | None = None
    if gap > problem.settings.relative_gap and not small:
        dived = dive(problem, opts, current, lp.n, deadline)
        if dived is not None:
            candidate, candidate_result = _routed(problem, opts, current, dived, deadline)
            if len(candidate_result.values) == len(STAGES) and _better(
                candidate_result, result, tolerance
            ):
                best, result = candidate, candidate_result
                gap = _gap(lp_result, result)
    if gap > problem.settings.relative_gap and not small:
        # Large problems: the accurate candidates (rounding, diving) serve a little less than
        # the greedy fill; cover their shortfalls with faster variants of the short services.
        for counts in (rounded, dived):
            if counts is None:
                continue
            repaired = repair_deficits(problem, opts, counts)
            if repaired == counts:
                continue
            candidate, candidate_result = _routed(problem, opts, current, repaired, deadline)
            if len(candidate_result.values) == len(STAGES) and _better(
                candidate_result, result, tolerance
            ):
                best, result = candidate, candidate_result
                gap = _gap(lp_result, result)
    if start:
        # The layout MILP solved this problem whole (with the layouts as variables): its
        # replicas are a candidate, so the plan serves at least what it served. The node
        # limits stop both short of the optimum in different places (the MIG benchmark's 13
        # GPUs: it served 100%, the polish from the rounding 99.96%).
        given = [
            start.get((problem.services[o.service].name, o.variant, problem.pools[o.pool].name), 0)
            if o.pipeline_id() is None
            else 0
            for o in opts
        ]
        if any(given) and _fits(problem, opts, given):
            candidate, candidate_result = _routed(problem, opts, current, given, deadline)
            # Only for more served or accuracy: the layout MILP's later stages are relabels
            # and GPUs, so its replicas may hold an idle extra the planner's own would not.
            if len(candidate_result.values) == len(STAGES) and _better(
                StageResult(candidate_result.values[:2], [], []),
                StageResult(result.values[:2], [], []),
                SMALL_GAP,
            ):
                best, result = candidate, candidate_result
                gap = _gap(lp_result, result)
    # Small problems are polished unless the rounding is provably optimal: the MILP is cheap
    # there, and rounding a handful of replicas can starve a small service entirely.
    if gap > (SMALL_GAP if small else problem.settings.relative_gap):
        # Polish: the MILP's served and accuracy stages, from the rounding, with replica counts
        # confined near the LP's (unless the problem is small), then the same routing.
        bounds = None
        if not small:
            bounds = window(lp.n, best.n)
        milp = StagedModel(problem, opts, current, integer=True, bounds=bounds)
        served_gap = SMALL_GAP if small else None
        if not small and _stage_gap(lp_result, result, 0) <= problem.settings.relative_gap:
            # Served is already within the goal: take the start as it is, spend the time on
            # accuracy.
            served_gap = 1.0
        polish_deadline = min(deadline, time.perf_counter() + problem.settings.polish_time_s)
        # Served, accuracy and additions: the routing below can only take replicas away, so
        # the MILP must already prefer the solution that moves fewest (of equal accuracy).
        # Large problems: candidates within the gap goal of each other on served tie
        # (`_better`), and so may the MILP's accuracy stage trade served within that goal.
        polished, polished_result = milp.run_stages(
            polish_deadline,
            best,
            3,
            served_gap,
            served_keep=0.0 if small else problem.settings.relative_gap,
        )
        if polished_result.values:  # at least the served stage finished in time
            n = [round(v) for v in polished.n]
            candidate, candidate_result = _routed(problem, opts, current, n, deadline)
            if len(candidate_result.values) == len(STAGES) and _better(
                candidate_result, result, tolerance
            ):
                best, result = candidate, candidate_result
            if bounds is None:
                # The full MILP's bounds hold for the whole problem: use the tighter ones.
                for stage, bound in enumerate(polished_result.bounds[: len(lp_result.bounds)][:2]):
                    lp_result.bounds[stage] = min(lp_result.bounds[stage], bound)
            gap = _gap(lp_result, result)
    if current:
        # Interchangeable pools: what runs stays where it runs (`relabel`).
        moved = keep_in_place(problem, opts, [round(v) for v in best.n], current)
        if moved != [round(v) for v in best.n]:
            candidate, candidate_result = _routed(problem, opts, current, moved, deadline)
            if len(candidate_result.values) == len(STAGES) and not _better(
                result, candidate_result, tolerance
            ):
                best, result = candidate, candidate_result
    best.n = [
        float(v) for v in apply_bounds(problem, opts, [round(v) for v in best.n], best.r, current)
    ]
    plan = _assemble(problem, opts, excluded, best, current, orphaned, result, gap, started)
    if kept is not None and result.values and not orphaned:
        # Stage 1's values of both: served, the fair shares' shortfalls weighted as planned.
        gain = max(0.0, result.values[0] - kept.values[0])
        plan = plan.model_copy(
            update={"stats": plan.stats.model_copy(update={"gain_over_current_qps": gain})}
        )
    return plan


def window(lp_n: list[float], incumbent: list[float]) -> list[tuple[int, int]]:
    """The polish MILP's bounds per option on a large problem: `WINDOW` replicas around the
    LP relaxation's count, widened to the incumbent's, so that the MILP starts from the
    incumbent (its hint) and can only improve on it. A greedy fill far from the LP's counts
    that served more than anything inside the window used to stay as it was, at its poor
    accuracy (the solver benchmark's 400 devices at load 5: 84.1 against 99.4)."""
    return [
        (
            min(max(0, math.floor(v + 1e-3) - WINDOW), round(b)),
            max(math.ceil(v - 1e-3) + WINDOW, round(b)),
        )
        for v, b in zip(lp_n, incumbent, strict=True)
    ]


def _no_solution(
    problem: Problem,
    opts: list[Option],
    excluded: list[Exclusion],
    result: StageResult,
    started: float,
) -> Plan:
    """The plan of a solve whose first stage failed: no rows, status NO_SOLUTION."""
    return Plan(
        rows=[],
        services=[
            ServicePlan(
                service=svc.name,
                demand_qps=svc.demand_qps,
                served_qps=0.0,
                unserved_qps=svc.demand_qps,
                capacity_qps=0.0,
                effective_accuracy=None,
                floor_met=False,
            )
            for svc in sorted(problem.services, key=lambda s: s.name)
        ],
        excluded=sorted(excluded, key=lambda e: (e.service, e.variant, e.pool)),
        stats=SolverStats(
            status="NO_SOLUTION",
            solver="ortools-glop+scip",
            solve_time_s=time.perf_counter() - started,
            served_qps=0.0,
            accuracy_term=0.0,
            cost=0.0,
            change=0,
            gap=1.0,
        ),
    )


def _fits(problem: Problem, opts: list[Option], replicas: list[int]) -> bool:
    """Whether `replicas` stay within every pool's devices."""
    used = [0] * len(problem.pools)
    for o, n in zip(opts, replicas, strict=True):
        for p in o.devices():
            used[p] += n
    return all(u <= pool.devices for u, pool in zip(used, problem.pools, strict=True))


def _routed(
    problem: Problem,
    opts: list[Option],
    current: dict[int, int],
    rounded: list[int],
    deadline: float,
) -> tuple[Solution, StageResult]:
    """Route within integral replicas, and release the replicas the routing leaves idle.

    The routing LP keeps replica counts continuous below the given ones, so its cost and
    change stages say how many replicas each option needs; rounding those up loses nothing.
    It is built over the options with replicas only (the others route nothing): a quarter of
    them on the operator benchmark's 1,000 services, where it took 0.4 s a call over all.
    An option left out counts its running replicas as removed in the change stage.
    """
    # With no replica at all, over every option: a model without options scores every stage
    # 0 (`run_stages`), where the served stage's fair-share shortfalls count against it.
    kept = [k for k, v in enumerate(rounded) if v > 0] or list(range(len(opts)))
    index = {k: i for i, k in enumerate(kept)}
    routing = StagedModel(
        problem,
        [opts[k] for k in kept],
        {index[k]: c for k, c in current.items() if k in index},
        integer=False,
        bounds=[(0, rounded[k]) for k in kept],
    )
    sub, result = routing.run_stages(deadline, None)
    removed = float(sum(c for k, c in current.items() if k not in index))
    if len(result.values) == len(STAGES):
        result.values[-1] += removed
        result.bounds[-1] += removed
    n, r = [0.0] * len(opts), [0.0] * len(opts)
    for i, k in enumerate(kept):
        o, routed = opts[k], sub.r[i]
        # Enough replicas for the routed load, even a tiny one; more only if the LP kept them.
        n[k] = float(
            min(
                rounded[k],
                max(math.ceil(routed / o.capacity_qps - 1e-9), math.ceil(sub.n[i] - 1e-6)),
            )
        )
        r[k] = routed
    return Solution(n=n, r=r), result


def _better(a: StageResult, b: StageResult, tolerance: float) -> bool:
    """Whether stage values `a` beat `b` lexicographically (max, max, min, min).

    Values within `tolerance` (relative) of each other tie: a candidate that serves 0.1% more
    by dropping accuracy 15 points does not win when the gap goal is 0.5%.
    """
    signs = tuple(1.0 if m else -1.0 for m in MAXIMIZE)
    for sign, x, y in zip(signs, a.values, b.values, strict=False):
        tol = max(tolerance, 1e-6) * max(1.0, abs(x), abs(y))
        if sign * (x - y) > tol:
            return True
        if sign * (y - x) > tol:
            return False
    return False


def _stage_gap(lp: StageResult, found: StageResult, stage: int) -> float:
    """Relative gap of one stage's value against the LP relaxation's bound."""
    if len(found.values) <= stage or len(lp.bounds) <= stage:
        return 1.0
    bound = lp.bounds[stage]
    return max(0.0, bound - found.values[stage]) / max(abs(bound), 1e-9)


def _gap(lp: StageResult, milp: StageResult) -> float:
    """Relative gap of the served and accuracy stages against the LP relaxation's bounds."""
    gaps = [1.0]
    if milp.values:
        gaps = []
        for stage in range(min(2, len(milp.values), len(lp.values))):
            bound, value = lp.bounds[stage], milp.values[stage]
            gaps.append(max(0.0, bound - value) / max(abs(bound), 1e-9))
    return max(gaps, default=0.0)


def _settle_routing(
    problem: Problem, opts: list[Option], replicas: list[int], routed: list[float]
) -> list[float]:
    """Routed QPS within capacity and demand, free of the solvers' tolerances.

    The stage constraints hold to a relative 1e-6, so a solver may leave a sliver of demand
    unserved next to idle capacity; route it to the most accurate spare capacity of its service.
    """
    out = [
        min(max(r, 0.0), n * o.capacity_qps) for r, n, o in zip(routed, replicas, opts, strict=True)
    ]
    by_service: dict[int, list[int]] = defaultdict(list)
    for k, o in enumerate(opts):
        by_service[o.service].append(k)
    for s, ks in by_service.items():
        ks.sort(key=lambda k: (-opts[k].value, -opts[k].accuracy, k))
        deficit = problem.services[s].demand_qps - sum(out[k] for k in ks)
        for k in ks:
            if deficit <= 0:
                break
            extra = min(deficit, replicas[k] * opts[k].capacity_qps - out[k])
            out[k] += extra
            deficit -= extra
        for k in reversed(ks):
            if deficit >= 0:
                break
            cut = min(-deficit, out[k])
            out[k] -= cut
            deficit += cut
    return out


def _overall_status(statuses: list[str], gap: float, relative_gap: float) -> str:
    """OPTIMAL when within the gap goal of the LP bound, else FEASIBLE; PARTIAL when a stage
    ran out of time, NO_SOLUTION when the first did."""
    if not statuses or statuses[0] == "NOT_SOLVED":
        return "NO_SOLUTION"
    if len(statuses) < len(STAGES) or "NOT_SOLVED" in statuses:
        return "PARTIAL"
    return "OPTIMAL" if gap <= relative_gap + 1e-9 else "FEASIBLE"


def _assemble(
    problem: Problem,
    opts: list[Option],
    excluded: list[Exclusion],
    best: Solution,
    current: dict[int, int],
    orphaned: int,
    result: StageResult,
    gap: float,
    started: float,
) -> Plan:
    rows: list[PlanRow] = []
    served = [0.0] * len(problem.services)
    capacity = [0.0] * len(problem.services)
    weighted = [0.0] * len(problem.services)
    capped = 0.0
    cost = 0.0
    change = orphaned
    replicas = [round(v) for v in best.n]
    routed_by_option = _settle_routing(problem, opts, replicas, best.r)
    for k, o in enumerate(opts):
        n = replicas[k]
        change += abs(n - current.get(k, 0))
        if n == 0:
            continue
        svc = problem.services[o.service]
        routed = routed_by_option[k]
        served[o.service] += routed
        capacity[o.service] += n * o.capacity_qps
        weighted[o.service] += routed * o.accuracy
        capped += routed * o.value
        cost += n * sum(problem.pools[p].cost_per_device for p in o.devices())
        rows.append(
            PlanRow(
                service=svc.name,
                variant=o.variant,
                pool=problem.pools[o.pool].name,
                replicas=n,
                max_batch_size=o.max_batch_size,
                capacity_qps_per_replica=o.capacity_qps,
                capacity_qps=n * o.capacity_qps,
                routed_qps=routed,
                accuracy=o.accuracy,
                pipeline=o.pipeline_id(),
                stages=plan_stages(problem, o, n),
            )
        )
    eligible = {o.service for o in opts}
    services: list[ServicePlan] = []
    for s, svc in enumerate(problem.services):
        got = min(served[s], svc.demand_qps)
        services.append(
            ServicePlan(
                service=svc.name,
                demand_qps=svc.demand_qps,
                served_qps=got,
                unserved_qps=max(0.0, svc.demand_qps - got),
                capacity_qps=capacity[s],
                effective_accuracy=weighted[s] / served[s] if served[s] > 0 else None,
                floor_met=s in eligible,
            )
        )
    stats = SolverStats(
        status=_overall_status(result.statuses, gap, problem.settings.relative_gap),
        solver="ortools-glop+scip",
        solve_time_s=time.perf_counter() - started,
        served_qps=sum(
            svc.priority * sp.served_qps for svc, sp in zip(problem.services, services, strict=True)
        ),
        accuracy_term=capped,
        cost=cost,
        change=change,
        gap=gap,
    )
    return Plan(
        rows=sorted(rows, key=lambda r: (r.service, r.variant, r.pool, r.pipeline or "")),
        services=sorted(services, key=lambda s: s.service),
        excluded=sorted(excluded, key=lambda e: (e.service, e.variant, e.pool)),
        stats=stats,
    )
