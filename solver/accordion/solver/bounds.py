"""Per-service bounds on replicas: `ServiceSpec.min_replicas` and `max_replicas` (KServe's).

Why two mechanisms:

* **The cap** (`max_replicas`) is a constraint of the model (`StagedModel` adds
  `sum of n over the service's options <= max_replicas`, `replica_caps`) and of the rounding
  (`under_cap`): the served and accuracy stages must know it, so that demand beyond the cap
  moves to faster variants or shows as a shortfall instead of being dropped by a later trim.
* **The floor** (`min_replicas`) is applied to the finished plan (`apply_bounds`), on devices the
  plan leaves free: a floor is a promise of readiness (no cold start), not of served demand, so
  it must never take a device that serves another service's demand, and as a hard constraint it
  would make the model infeasible whenever the floors of all services exceed the devices. The
  added replicas go to the option that runs now (no churn between passes), else to the most
  accurate one on the cheapest pool; they carry no routed demand of their own (the router
  spreads by capacity when the plan routes nothing, `desired.service_routing`).

A trim (`apply_bounds` with a cap below what the rounding kept, e.g. ceilings in the routing
step) takes replicas from the options with the most idle capacity first, so routed demand is
kept wherever capacity allows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from accordion.solver.capacity import Option
from accordion.solver.problem import Problem


def replica_caps(problem: Problem, opts: Sequence[Option]) -> dict[int, tuple[list[int], int]]:
    """Per capped service (index): the indices of its options and its `max_replicas`."""
    out: dict[int, tuple[list[int], int]] = {}
    for k, o in enumerate(opts):
        cap = problem.services[o.service].max_replicas
        if cap is not None:
            out.setdefault(o.service, ([], cap))[0].append(k)
    return out


def under_cap(problem: Problem, opts: Sequence[Option], n: Sequence[int], service: int) -> bool:
    """Whether `service` may get one more replica under its `max_replicas`."""
    cap = problem.services[service].max_replicas
    if cap is None:
        return True
    return sum(v for o, v in zip(opts, n, strict=True) if o.service == service) < cap


def apply_bounds(
    problem: Problem,
    opts: Sequence[Option],
    replicas: Sequence[int],
    routed: Sequence[float],
    current: dict[int, int],
) -> list[int]:
    """`replicas` trimmed to every service's cap and raised to its floor on free devices."""
    n = list(replicas)
    by_service: dict[int, list[int]] = defaultdict(list)
    for k, o in enumerate(opts):
        by_service[o.service].append(k)
    # Trim: most idle capacity first (capacity beyond what is routed there).
    for s, ks in by_service.items():
        cap = problem.services[s].max_replicas
        if cap is None:
            continue
        while sum(n[k] for k in ks) > cap:
            k = max(
                (k for k in ks if n[k] > 0),
                key=lambda k: (n[k] * opts[k].capacity_qps - routed[k], k),
            )
            n[k] -= 1
    free = [pool.devices for pool in problem.pools]
    for k, o in enumerate(opts):
        for p in o.devices():
            free[p] -= n[k]
    # Raise: the floors of higher-priority services first, then by name (deterministic).
    order = sorted(by_service, key=lambda s: (-problem.services[s].priority, s))
    for s in order:
        svc = problem.services[s]
        cap = svc.max_replicas
        floor = svc.min_replicas if cap is None else min(svc.min_replicas, cap)
        ks = by_service[s]
        missing = floor - sum(n[k] for k in ks)
        while missing > 0:
            # Replicas of each option that still fit on its pools' free devices.
            room = {k: min(free[p] // c for p, c in Counter(opts[k].devices()).items()) for k in ks}
            fitting = [k for k in ks if room[k] > 0]
            if not fitting:
                break
            k = min(
                fitting,
                key=lambda k: (
                    -(n[k] + current.get(k, 0) > 0),  # what runs or is planned now
                    -opts[k].value,
                    problem.pools[opts[k].pool].cost_per_device,
                    k,
                ),
            )
            take = min(missing, room[k])
            n[k] += take
            missing -= take
            for p in opts[k].devices():
                free[p] -= take
    return n
