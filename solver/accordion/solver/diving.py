"""LP diving: integral replica counts that keep the LP's served demand and accuracy.

Rounding every option at once (`rounding`) loses what the fractional parts served together;
when that misses the gap goal, the planner dives instead: fix the options the LP already gives
integral counts, round the most fractional half of the rest (up while the pool has room,
else down), re-solve the served and accuracy stages with the new bounds, and repeat until no
count is fractional. Each round is two small LPs, so a dive costs a few dozen LP solves, far
less than the MILP search at thousands of devices. A half rather than a quarter a round: at
3,000 devices with pipeline options (whose rounding misses the goal more often) the dive is
most of the planner's time, and a half takes about half the rounds for the same served
demand (bench/results/pipelines.md, the planner's time).
"""

from __future__ import annotations

import math
from collections import Counter

from accordion.solver.capacity import Option
from accordion.solver.model import StagedModel
from accordion.solver.problem import Problem

_EPS = 1e-3  # GLOP leaves 0.9999993 where it means 1
ROUND_SHARE = 2
"""Each round fixes 1/ROUND_SHARE of the options the LP leaves fractional."""


def dive(
    problem: Problem,
    opts: list[Option],
    current: dict[int, int],
    n_lp: list[float],
    deadline: float,
    max_rounds: int = 64,
) -> list[int] | None:
    """Integral replica counts found by diving from `n_lp`, or None when out of time."""
    n = list(n_lp)
    lower = [0] * len(opts)
    takes = [Counter(o.devices()) for o in opts]  # a pipeline replica takes several pools
    upper = [min(problem.pools[p].devices // c for p, c in t.items()) for t in takes]
    for _ in range(max_rounds):
        fractional = [k for k, v in enumerate(n) if abs(v - round(v)) > _EPS]
        if not fractional:
            return [round(v) for v in n]
        fractional.sort(key=lambda k: (-(n[k] - math.floor(n[k])), k))
        used = [0] * len(problem.pools)
        for k in range(len(opts)):
            for p, c in takes[k].items():
                used[p] += c * max(lower[k], math.floor(n[k] + _EPS))
        for k in fractional[: max(1, len(fractional) // ROUND_SHARE)]:
            up = math.ceil(n[k])
            if all(used[p] + c <= problem.pools[p].devices for p, c in takes[k].items()):
                for p, c in takes[k].items():
                    used[p] += c
                lower[k] = upper[k] = up
            else:
                lower[k] = upper[k] = math.floor(n[k])
        model = StagedModel(
            problem, opts, current, integer=False, bounds=list(zip(lower, upper, strict=True))
        )
        solution, result = model.run_stages(deadline, None, count=3)
        if len(result.values) < 2:
            return None
        n = solution.n
    return None
