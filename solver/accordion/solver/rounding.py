"""Turn the LP relaxation's fractional replica counts into integers, quickly.

At thousands of devices the LP relaxation is nearly integral: rounding moves each option's
replica count by less than one. Rounding down keeps every pool within its devices; the devices
that frees go, one at a time, where they serve the most unserved demand (priority first, then
the accuracy the objective counts), preferring the options the LP itself wanted more of.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter

from accordion.solver.bounds import under_cap
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
        for p in o.devices():  # a pipeline replica takes devices of several pools
            free[p] -= n[k]
        deficit[o.service] -= n[k] * o.capacity_qps

    def key(k: int) -> tuple[float, float, float, bool, float, int]:
        o = opts[k]
        served = min(o.capacity_qps, deficit[o.service]) / len(o.devices())  # per device
        cost = sum(problem.pools[p].cost_per_device for p in o.devices())
        priority = problem.services[o.service].priority
        return (
            priority * served,
            o.value * served,
            -cost,
            n[k] < current.get(k, 0),
            n_lp[k] - n[k],
            -k,
        )

    # Greedy, with a lazy max-heap: an option's key only falls as its service's deficit
    # shrinks, so a popped key that is still current is the best one.
    heap = [(_negate(key(k)), k) for k in range(len(opts))]
    heapq.heapify(heap)
    while heap:
        stale, k = heapq.heappop(heap)
        o = opts[k]
        if deficit[o.service] <= 1e-9 or any(free[p] < c for p, c in Counter(o.devices()).items()):
            continue
        if not under_cap(problem, opts, n, o.service):  # maxReplicas (`bounds`)
            continue
        fresh = _negate(key(k))
        if fresh != stale:
            heapq.heappush(heap, (fresh, k))
            continue
        n[k] += 1
        for p in o.devices():
            free[p] -= 1
        deficit[o.service] -= o.capacity_qps
        heapq.heappush(heap, (_negate(key(k)), k))
    return n


def _negate(
    key: tuple[float, float, float, bool, float, int],
) -> tuple[float, float, float, int, float, int]:
    return (-key[0], -key[1], -key[2], -int(key[3]), -key[4], -key[5])
