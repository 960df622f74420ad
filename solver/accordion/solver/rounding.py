"""Turn the LP relaxation's fractional replica counts into integers, quickly.

At thousands of devices the LP relaxation is nearly integral: rounding moves each option's
replica count by less than one. Rounding down keeps every pool within its devices; the devices
that frees go, one at a time, where they serve the most unserved demand (priority first, then
the accuracy the objective counts), preferring the options the LP itself wanted more of.
"""

from __future__ import annotations

import math

from accordion.solver.capacity import Option
from accordion.solver.problem import Problem


def round_replicas(
    problem: Problem, opts: list[Option], n_lp: list[float], current: dict[int, int]
) -> list[int]:
    """Integral replica counts near `n_lp` that respect every pool's device count."""
    n = [math.floor(v + 1e-3) for v in n_lp]  # GLOP leaves 0.9999993 where it means 1
    free = [pool.devices for pool in problem.pools]
    deficit = [svc.demand_qps for svc in problem.services]
    for k, o in enumerate(opts):
        free[o.pool] -= n[k]
        deficit[o.service] -= n[k] * o.capacity_qps
    while True:
        best: tuple[float, float, float, bool, float, int] | None = None
        for k, o in enumerate(opts):
            if free[o.pool] <= 0 or deficit[o.service] <= 1e-9:
                continue
            priority = problem.services[o.service].priority
            gain = priority * min(o.capacity_qps, deficit[o.service])
            accuracy = o.value * min(o.capacity_qps, deficit[o.service])
            cost = problem.pools[o.pool].cost_per_device
            key = (gain, accuracy, -cost, n[k] < current.get(k, 0), n_lp[k] - n[k], -k)
            if best is None or key > best:
                best = key
        if best is None:
            return n
        k = -best[5]
        n[k] += 1
        free[opts[k].pool] -= 1
        deficit[opts[k].service] -= opts[k].capacity_qps
