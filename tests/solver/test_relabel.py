"""Interchangeable pools (`relabel`): what runs stays where it runs, and nothing else changes.

The case is the one measured on the bursty workload: two pools with the same profile (Proteus's
VPUs run the CPU profile) and a plan that serves the same with the replicas swapped between
them, which would restart every one of them.
"""

from __future__ import annotations

from collections import Counter

from accordion.solver import (
    Allocation,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
    plan,
)
from accordion.solver.capacity import options
from accordion.solver.relabel import additions, interchangeable, keep_in_place


def _service(name: str, p50_s: dict[str, float]) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        demand_qps=100.0,
        slo_s=0.3,
        variants=[
            VariantSpec(
                name="v",
                accuracy=90.0,
                profiles={pool: [ProfilePoint(batch_size=1, p50_s=s)] for pool, s in p50_s.items()},
            )
        ],
    )


def _problem(gpu_cost: float = 1.0) -> Problem:
    same = {"cpu": 0.05, "vpu": 0.05, "gpu": 0.01}
    return Problem(
        pools=[
            PoolSpec(name="cpu", devices=4),
            PoolSpec(name="vpu", devices=3),
            PoolSpec(name="gpu", devices=2, cost_per_device=gpu_cost),
        ],
        services=[_service("a", same), _service("b", same)],
        current=[
            Allocation(service="a", variant="v", pool="cpu", replicas=3),
            Allocation(service="b", variant="v", pool="vpu", replicas=2),
        ],
    )


def test_identical_pools_are_grouped_and_others_not() -> None:
    problem = _problem()
    opts, _ = options(problem)
    assert interchangeable(problem, opts) == [[0, 1]]  # cpu and vpu; gpu is faster
    costly = _problem(gpu_cost=2.0)
    assert interchangeable(costly, options(costly)[0]) == [[0, 1]]


def test_a_swapped_plan_is_laid_out_where_it_runs() -> None:
    problem = _problem()
    opts, _ = options(problem)
    index = {
        (problem.services[o.service].name, problem.pools[o.pool].name): k
        for k, o in enumerate(opts)
    }
    current = {index[("a", "cpu")]: 3, index[("b", "vpu")]: 2}
    # The plan as a timed-out solver may give it: a on vpu, b on cpu, one more of b on gpu.
    swapped = [0] * len(opts)
    swapped[index[("a", "vpu")]] = 3
    swapped[index[("b", "cpu")]] = 2
    swapped[index[("b", "gpu")]] = 1
    out = keep_in_place(problem, opts, swapped, current)
    got = {key: out[k] for key, k in index.items() if out[k]}
    assert got == {("a", "cpu"): 3, ("b", "vpu"): 2, ("b", "gpu"): 1}
    assert additions(out, current) == 1 < additions(swapped, current) == 6
    # The same replicas per (service, variant) over the group; every pool within its devices.
    used: Counter[int] = Counter()
    for k, o in enumerate(opts):
        used[o.pool] += out[k]
    assert all(used[p] <= pool.devices for p, pool in enumerate(problem.pools))


def test_a_plan_that_moves_more_than_the_pools_hold_is_laid_out_within_them() -> None:
    problem = _problem()
    opts, _ = options(problem)
    index = {
        (problem.services[o.service].name, problem.pools[o.pool].name): k
        for k, o in enumerate(opts)
    }
    current = {index[("a", "cpu")]: 3, index[("b", "vpu")]: 2}
    grown = [0] * len(opts)
    grown[index[("a", "vpu")]] = 3  # a keeps 3, b grows to 4: cpu 4 + vpu 3 = 7 devices
    grown[index[("b", "cpu")]] = 4
    out = keep_in_place(problem, opts, grown, current)
    assert out[index[("a", "cpu")]] + out[index[("a", "vpu")]] == 3
    assert out[index[("b", "cpu")]] + out[index[("b", "vpu")]] == 4
    assert out[index[("a", "cpu")]] + out[index[("b", "cpu")]] <= 4
    assert out[index[("a", "vpu")]] + out[index[("b", "vpu")]] <= 3
    assert additions(out, current) == 2  # only b's two new replicas


def test_the_planner_keeps_replicas_on_the_pool_where_they_run() -> None:
    got = plan(_problem())
    rows = {(r.service, r.pool): r.replicas for r in got.rows}
    assert rows.get(("a", "cpu"), 0) >= 2
    assert rows.get(("a", "vpu"), 0) == 0
    assert rows.get(("b", "vpu"), 0) >= 2
    assert rows.get(("b", "cpu"), 0) == 0
