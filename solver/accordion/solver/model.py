"""The planner's optimization model, solved one lexicographic stage at a time.

Devices of one pool are interchangeable, so the model counts replicas per (service, variant,
pool) instead of placing each device (Proteus's formulation): n[o] replicas and r[o] routed QPS
for every usable option o, and u[s] unserved QPS per service.

    pools       sum_{o on p} takes[o, p] * n[o] <= devices[p]   (a pipeline takes several pools)
    capacity    r[o] <= capacity[o] * n[o]
    demand      sum_{o of s} r[o] + u[s] = demand[s]

Each stage optimizes one objective term, then keeps it (as good as the incumbent found) as a
constraint for the next. Weights cannot express this order safely: a tiny loss in served QPS may
buy a large accuracy gain, with no bound on the ratio. The same class builds the LP relaxation
(n continuous, GLOP) and the MILP (n integer, SCIP), optionally with n confined to bounds.

The stages (`STAGES`), in order:

1. served: priority-weighted served QPS, with a fair-share floor: the first `fair_share` of
   every service's demand counts `FAIR_WEIGHT` times (v[s] >= u[s] - (1 - fair_share) *
   demand[s] is the unserved part of that floor), so that in overload no service whose demand
   could be served in part is left with nothing while others get all of theirs;
2. accuracy: demand-weighted accuracy, capped at each service's target; each service's part
   kept within `accuracy_tolerance` (relative to that service's part) for the next stages;
3. additions: new replicas against what runs (sum of max(0, n - current)): within that
   tolerance, a re-plan moves as few replicas as it can (each move costs a model load, and on
   a full pool a device that serves nothing meanwhile);
4. cost: device cost (hardware scaling down);
5. change: |n - current| overall (no flapping between equal plans).

Every number is finite and bounded by the `Problem`'s validation; the slack a stage keeps is
relative to its value, with a floor that lets no service's demand be traded away. A stage that
finds nothing under the rows kept before it has them all loosened (`KEEP_RETRY`) and runs
again.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from accordion.solver.bounds import replica_caps
from accordion.solver.capacity import Option
from accordion.solver.problem import Problem

_STATUS = {
    pywraplp.Solver.OPTIMAL: "OPTIMAL",
    pywraplp.Solver.FEASIBLE: "FEASIBLE",
    pywraplp.Solver.INFEASIBLE: "INFEASIBLE",
    pywraplp.Solver.UNBOUNDED: "UNBOUNDED",
    pywraplp.Solver.ABNORMAL: "ABNORMAL",
    pywraplp.Solver.NOT_SOLVED: "NOT_SOLVED",
}


@dataclass
class Solution:
    """Replicas and routed QPS per option (replicas fractional in the LP relaxation)."""

    n: list[float]
    r: list[float]


@dataclass
class StageResult:
    """Objective values and statuses of the stages solved, in order; `loosened`: how many
    times a kept stage was loosened (`KEEP_RETRY`) for the next one to solve."""

    values: list[float]
    bounds: list[float]
    statuses: list[str]
    loosened: int = 0


LP_MIN_TIME_S = 5.0
"""An LP solve gets at least this long even past the planner's deadline."""

ROOT_CUT_ROUNDS = 3
"""Cutting-plane rounds SCIP may run at a MILP stage's root node (its default: no limit). With
the node limit (`PlannerSettings.polish_nodes`) it is what makes a stage end on its own work
rather than on the clock: on the overload trace's planner calls, stages spent their whole time
share in the root node's cut rounds (1-4 nodes in 0.7 s) and stopped wherever they were; with 3
rounds and 100 nodes 1 of 32 sampled calls did (17 before), in 37% less time, with plans as
good (bench/proteus/NOTES.md)."""

STAGES = ("served", "accuracy", "additions", "cost", "change")
MAXIMIZE = (True, True, False, False, False)
FAIR_WEIGHT = 1000.0
"""How much more the fair-share floor of a service's demand counts than the rest of it."""
KEEP_RELATIVE = 1e-9
KEEP_ABSOLUTE = 1e-7
"""The slack a kept stage gets (its value times KEEP_RELATIVE, plus KEEP_ABSOLUTE): the
solvers' tolerances, and no more: 1e-6 of a 1e6 req/s cluster would let a 0.5 req/s service
be dropped by a later stage."""
KEEP_RETRY = (1e-6, 1e-4)
"""Relative slacks the kept stages are loosened to, in turn, when a later stage finds nothing:
the incumbent meets every kept row, so that stage's failure is numerical (a served value of
3.5e6 held to 4e-3, with capacity coefficients from 0.02 to 1e6 in the same rows, left GLOP
with no solution to the accuracy stage, and the plan ignored accuracy; on the bursty trace a
6-option routing LP found no solution to its change stage under an additions row held at
0.999997, two stages back). Every kept row is loosened, not only the last stage's. Only then:
a plan whose every stage solves keeps the tight slack."""


@dataclass
class Kept:
    """A constraint that holds a finished stage's objective near `value` (see `keep`)."""

    constraint: pywraplp.Constraint
    value: float
    constant: float
    maximize: bool
    tolerance: float

    def set_slack(self, relative: float, inf: float) -> None:
        """Hold the objective within `relative` of `value` (at least the tolerance it was kept
        with, and `KEEP_ABSOLUTE` more)."""
        slack = max(self.tolerance, relative) * abs(self.value) + KEEP_ABSOLUTE
        if self.maximize:
            self.constraint.SetBounds(self.value - slack - self.constant, inf)
        else:
            self.constraint.SetBounds(-inf, self.value + slack - self.constant)


CAPACITY_CAP = 1e6
"""The largest capacity coefficient of a replica, in req/s, unless its service's demand is
larger (the API's demand bound)."""
CAPACITY_CAP_FACTOR = 1000.0
"""...and at most this many times its service's demand (at least 1 req/s)."""


def capacity_coefficient(capacity_qps: float, demand_qps: float) -> float:
    """A replica's coefficient in `r <= coefficient * n`: its capacity, capped where that
    changes no integral solution (r <= demand already) and the LP stays well scaled.

    A profile may claim billions of requests per second, which made the LP numerically
    unsolvable (NO_SOLUTION in the hostile-spec fuzz). Capping at the demand itself would fix
    that too, but it also changes the LP relaxation of every ordinary problem where one replica
    could serve the whole demand: the relaxation then no longer sees that a faster replica
    serves the same demand with a smaller fraction of a device, and ties between a fast and a
    slow pool at equal cost fall either way (big models landed on the slower GPUs, with less
    room for bursts: zipf-p50 0.20% -> 0.33% violations). Capped at `CAPACITY_CAP_FACTOR` times
    the demand, and at `CAPACITY_CAP` unless the demand is larger, a realistic profile keeps its
    own capacity, and no coefficient exceeds max(demand, 1e6).
    """
    return min(
        capacity_qps,
        CAPACITY_CAP_FACTOR * max(demand_qps, 1.0),
        max(demand_qps, CAPACITY_CAP),
    )


Terms = tuple[list[pywraplp.Variable], list[float], float]
"""A linear expression: variables, their coefficients, and a constant."""


class StagedModel:
    """The model of one problem, re-solved once per objective stage.

    Built with the solver's low-level API: the natural one (`x <= y`) parses Python
    expressions and costs more than the solve itself at thousands of options.
    """

    def __init__(
        self,
        problem: Problem,
        opts: list[Option],
        current: dict[int, int],
        *,
        integer: bool,
        bounds: list[tuple[int, int]] | None = None,
        node_limit: int | None = None,
    ) -> None:
        """`node_limit`: nodes each MILP stage may explore (default `polish_nodes`)."""
        self.problem = problem
        self.opts = opts
        self.current = current
        self.integer = integer
        solver = pywraplp.Solver.CreateSolver("SCIP" if integer else "GLOP")
        if solver is None:
            raise RuntimeError("OR-Tools lacks the SCIP or GLOP backend")
        self.solver: pywraplp.Solver = solver
        if integer:
            # A stage's deterministic stops (the time limit stays the backstop).
            solver.SetSolverSpecificParametersAsString(
                f"limits/nodes = {node_limit or problem.settings.polish_nodes}\n"
                f"separating/maxroundsroot = {ROOT_CUT_ROUNDS}\n"
            )
        inf = solver.infinity()
        self.n: list[pywraplp.Variable] = []
        self.r: list[pywraplp.Variable] = []
        by_pool: dict[int, list[tuple[pywraplp.Variable, float]]] = defaultdict(list)
        by_service: dict[int, list[pywraplp.Variable]] = defaultdict(list)
        for k, o in enumerate(opts):
            demand = problem.services[o.service].demand_qps
            # A replica takes one device of each entry of devices() (a pipeline: several pools).
            takes = Counter(o.devices())
            devices = min(problem.pools[p].devices // c for p, c in takes.items())
            # More replicas than it takes to serve the whole demand alone never help (or than
            # run now: keeping free devices busy is no worse and changes nothing).
            alone = demand / o.capacity_qps
            need = max(devices if alone >= devices else math.ceil(alone), current.get(k, 0))
            lb, ub = 0, min(devices, need, problem.services[o.service].max_replicas or devices)
            if bounds is not None:
                lb, ub = max(lb, bounds[k][0]), min(ub, bounds[k][1])
                lb = min(lb, ub)
            n = solver.IntVar(lb, ub, f"n{k}") if integer else solver.NumVar(lb, ub, f"n{k}")
            r = solver.NumVar(0, min(demand, ub * o.capacity_qps), f"r{k}")
            capacity = solver.Constraint(-inf, 0.0)  # r - capacity * n <= 0
            capacity.SetCoefficient(r, 1.0)
            capacity.SetCoefficient(n, -capacity_coefficient(o.capacity_qps, demand))
            self.n.append(n)
            self.r.append(r)
            for p, c in takes.items():
                by_pool[p].append((n, float(c)))
            by_service[o.service].append(r)
        for p, uses in sorted(by_pool.items()):
            if sum(v.ub() * c for v, c in uses) > problem.pools[p].devices:
                devices = problem.pools[p].devices
                self._add([v for v, _ in uses], [c for _, c in uses], -inf, devices)
        for ks, cap in replica_caps(problem, opts).values():  # maxReplicas (`bounds`)
            self._add([self.n[k] for k in ks], [1.0] * len(ks), -inf, cap)
        self.u: list[pywraplp.Variable] = []
        self.v: list[pywraplp.Variable] = []
        share = problem.settings.fair_share
        for s, svc in enumerate(problem.services):
            u = solver.NumVar(0, svc.demand_qps, f"u{s}")
            routed = by_service.get(s, [])
            self._add([*routed, u], [1.0] * (len(routed) + 1), svc.demand_qps, svc.demand_qps)
            self.u.append(u)
            v = solver.NumVar(0, share * svc.demand_qps, f"v{s}")
            self._add([v, u], [1.0, -1.0], -(1.0 - share) * svc.demand_qps, inf)  # v >= u - ..
            self.v.append(v)

    def _add(
        self, variables: list[pywraplp.Variable], coefs: list[float], lb: float, ub: float
    ) -> pywraplp.Constraint:
        constraint = self.solver.Constraint(lb, ub)
        for var, coef in zip(variables, coefs, strict=True):
            constraint.SetCoefficient(var, coef)
        return constraint

    def run_stages(
        self,
        deadline: float,
        hint: Solution | None,
        count: int = len(STAGES),
        served_gap: float | None = None,
        served_keep: float = 0.0,
    ) -> tuple[Solution, StageResult]:
        """Solve the first `count` stages in order; stop early when one finds nothing in time.

        `served_gap` overrides the relative MIP gap of the first (served) stage; `served_keep`:
        how much (relative) of the served stage's value the later stages may give up.
        """
        terms = [
            self.served_terms(),
            self.accuracy_terms(),
            self.addition_terms(self.current),
            self.cost_terms(),
            self.change_terms(self.current),
        ]
        stages = list(zip(terms, MAXIMIZE, strict=True))[:count]
        result = StageResult(values=[], bounds=[], statuses=[])
        best = hint
        kept: list[Kept] = []
        for i, (stage_terms, maximize) in enumerate(stages):
            if not self.opts:
                result.values.append(0.0)
                result.bounds.append(0.0)
                result.statuses.append("OPTIMAL")
                continue
            gap = self.problem.settings.relative_gap
            if i == 0 and served_gap is not None:
                gap = served_gap
            # Share what time is left evenly among the stages still to run.
            now = time.perf_counter()
            stage_deadline = now + (deadline - now) / (len(stages) - i)
            outcome = self.solve(stage_terms, maximize, stage_deadline, best, gap)
            for relative in KEEP_RETRY if kept else ():
                if outcome is not None or time.perf_counter() >= stage_deadline:
                    break
                for row in kept:
                    row.set_slack(relative, self.solver.infinity())
                result.loosened += 1
                outcome = self.solve(stage_terms, maximize, stage_deadline, best, gap)
            if outcome is None:
                result.statuses.append("NOT_SOLVED")
                break
            value, bound, status = outcome
            result.values.append(value)
            result.bounds.append(bound)
            result.statuses.append(status)
            best = self.solution()
            if i + 1 < len(stages):
                if i == 1:
                    kept += self.keep_accuracy_per_service(best)
                else:
                    kept.append(
                        self.keep(stage_terms, value, maximize, served_keep if i == 0 else 0.0)
                    )
        if best is None:
            best = Solution(n=[0.0] * len(self.opts), r=[0.0] * len(self.opts))
        return best, result

    def served_terms(self) -> Terms:
        """Priority-weighted served QPS, the fair-share floor counted `FAIR_WEIGHT` times:
        sum priority * (demand - u - FAIR_WEIGHT * v)."""
        services = self.problem.services
        constant = sum(svc.priority * svc.demand_qps for svc in services)
        coefs = [-float(svc.priority) for svc in services]
        coefs += [-FAIR_WEIGHT * svc.priority for svc in services]
        return [*self.u, *self.v], coefs, constant

    def accuracy_terms(self) -> Terms:
        return list(self.r), [o.value for o in self.opts], 0.0

    def cost_terms(self) -> Terms:
        pools = self.problem.pools
        costs = [sum(pools[p].cost_per_device for p in o.devices()) for o in self.opts]
        return list(self.n), costs, 0.0

    def addition_terms(self, current: dict[int, int]) -> Terms:
        """New replicas: sum of max(0, n - current), one auxiliary variable per running option."""
        return self._distance_terms(current, removals=False)

    def change_terms(self, current: dict[int, int]) -> Terms:
        """Sum of |n - current| over options, with one auxiliary variable per running option."""
        return self._distance_terms(current, removals=True)

    def _distance_terms(self, current: dict[int, int], *, removals: bool) -> Terms:
        """Sum over options of how far n is above `current` (and below it, with `removals`):
        an option that runs nothing counts n itself; a running one gets a variable d with
        d >= n - running (and d >= running - n)."""
        variables: list[pywraplp.Variable] = []
        inf = self.solver.infinity()
        for k, n in enumerate(self.n):
            running = current.get(k, 0)
            if running == 0:
                variables.append(n)
                continue
            d = self.solver.NumVar(0, inf, f"d{k}")
            self._add([d, n], [1.0, -1.0], -running, inf)  # d >= n - running
            if removals:
                self._add([d, n], [1.0, 1.0], running, inf)  # d >= running - n
            variables.append(d)
        return variables, [1.0] * len(variables), 0.0

    def solve(
        self,
        terms: Terms,
        maximize: bool,
        deadline: float,
        hint: Solution | None,
        relative_gap: float,
    ) -> tuple[float, float, str] | None:
        """Optimize `terms`; return (objective, best bound, status), or None without solution."""
        solver = self.solver
        objective = solver.Objective()
        objective.Clear()
        variables, coefs, constant = terms
        for var, coef in zip(variables, coefs, strict=True):
            objective.SetCoefficient(var, coef)
        objective.SetOffset(constant)
        if maximize:
            objective.SetMaximization()
        else:
            objective.SetMinimization()
        if hint is not None and self.integer:
            solver.SetHint([*self.n, *self.r], [*(float(v) for v in hint.n), *hint.r])
        remaining = deadline - time.perf_counter()
        if not self.integer:
            # LPs take milliseconds and every plan needs them: the limit binds the MILP search.
            remaining = max(remaining, LP_MIN_TIME_S)
        solver.SetTimeLimit(max(1, int(remaining * 1000)))
        params = pywraplp.MPSolverParameters()
        if self.integer:
            params.SetDoubleParam(params.RELATIVE_MIP_GAP, relative_gap)
        status = solver.Solve(params)
        if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            return None
        value = objective.Value()
        bound = objective.BestBound() if self.integer else value
        return value, bound, _STATUS[status]

    def keep(self, terms: Terms, value: float, maximize: bool, tolerance: float = 0.0) -> Kept:
        """Constrain a finished stage's objective to stay as good as its incumbent, less the
        solvers' tolerance (`KEEP_RELATIVE`, `KEEP_ABSOLUTE`) or `tolerance` (relative)."""
        variables, coefs, constant = terms
        row = Kept(self._add(variables, coefs, 0.0, 0.0), value, constant, maximize, tolerance)
        row.set_slack(KEEP_RELATIVE, self.solver.infinity())
        return row

    def keep_accuracy_per_service(self, found: Solution) -> list[Kept]:
        """Keep every service's accuracy term within `accuracy_tolerance` of the accuracy
        stage's solution (one constraint per service, not one for the whole cluster: a
        tolerance relative to the cluster would let a huge tenant's term hide another
        service's whole accuracy)."""
        tolerance = self.problem.settings.accuracy_tolerance
        by_service: dict[int, list[int]] = defaultdict(list)
        for k, o in enumerate(self.opts):
            by_service[o.service].append(k)
        rows = []
        for ks in by_service.values():
            value = sum(found.r[k] * self.opts[k].value for k in ks)
            terms = ([self.r[k] for k in ks], [self.opts[k].value for k in ks], 0.0)
            rows.append(self.keep(terms, value, True, tolerance))
        return rows

    def solution(self) -> Solution:
        return Solution(
            n=[v.solution_value() for v in self.n],
            r=[max(0.0, v.solution_value()) for v in self.r],
        )
