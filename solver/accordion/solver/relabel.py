"""Pools the plan cannot tell apart: keep each replica on the pool where it runs.

Two pools whose devices cost the same and on which every variant has the same capacity (two
node pools of one GPU type, or Proteus's VPUs that run the CPU profile) are interchangeable:
any plan can move its replicas from one to the other and serve, cost and score the same. The
planner's stages minimise new replicas, but only as far as the solver gets in its time: a
polish that runs out of time returns a plan that may swap whole groups between such pools
(measured on the bursty workload: 21 of 40 devices restarted in one re-plan at steady demand,
each one a model load during which its capacity is gone). This step takes the plan's replica
counts per (service, variant) over each group of interchangeable pools and lays them out again
so that as many as possible stay where they run: a pure relabelling, never a different plan.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence

from accordion.solver.capacity import Option
from accordion.solver.problem import Problem


def _devices(o: Option) -> tuple[int, ...]:
    """The pool of every device one replica of `o` takes (a pipeline's parts take several)."""
    devices = getattr(o, "devices", None)
    return (o.pool,) if devices is None else tuple(devices())


def _single(o: Option) -> bool:
    """Whether one replica of `o` takes one device of its own pool."""
    return _devices(o) == (o.pool,)


def interchangeable(problem: Problem, opts: Sequence[Option]) -> list[list[int]]:
    """Groups (of two or more) of pool indices that no option tells apart."""
    signature: dict[int, set[tuple[Hashable, ...]]] = defaultdict(set)
    for o in opts:
        signature[o.pool].add(
            (
                o.service,
                o.variant,
                _single(o),
                o.max_batch_size,
                o.capacity_qps,
                o.accuracy,
                o.value,
            )
        )
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for p, sig in signature.items():
        if all(item[2] for item in sig):  # pipelines stay where the plan puts them
            groups[(problem.pools[p].cost_per_device, frozenset(sig))].append(p)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def additions(n: Sequence[int], current: dict[int, int]) -> int:
    """New replicas of `n` against what runs."""
    return sum(max(0, v - current.get(k, 0)) for k, v in enumerate(n))


def keep_in_place(
    problem: Problem, opts: Sequence[Option], n: Sequence[int], current: dict[int, int]
) -> list[int]:
    """`n` with the replicas of interchangeable pools laid out where they run now, when that
    adds fewer new replicas; else `n` itself."""
    out = list(n)
    index = {(o.service, o.variant, o.pool): k for k, o in enumerate(opts) if _single(o)}
    for group in interchangeable(problem, opts):
        members = set(group)
        items = sorted({(o.service, o.variant) for o in opts if o.pool in members})
        free = {p: problem.pools[p].devices for p in group}
        for k, o in enumerate(opts):
            if not _single(o):
                for p in _devices(o):
                    if p in free:
                        free[p] -= n[k]
        total = {item: sum(n[index[(*item, p)]] for p in group) for item in items}
        placed = {(*item, p): 0 for item in items for p in group}
        # What runs stays, as far as the plan keeps it and the pool has room.
        for item in items:
            for p in group:
                keep = min(current.get(index[(*item, p)], 0), total[item], free[p])
                placed[(*item, p)] += keep
                total[item] -= keep
                free[p] -= keep
        # The rest where the plan put it, then wherever there is room.
        for item in items:
            for prefer in (True, False):
                for p in group:
                    if total[item] <= 0:
                        break
                    room = free[p]
                    if prefer:
                        room = min(room, max(0, n[index[(*item, p)]] - placed[(*item, p)]))
                    take = min(total[item], room)
                    placed[(*item, p)] += take
                    total[item] -= take
                    free[p] -= take
        if any(left > 0 for left in total.values()):
            continue  # cannot happen (the plan fits the group); keep the plan as it is
        for key, v in placed.items():
            out[index[key]] = v
    return out if additions(out, current) < additions(n, current) else list(n)
