"""The burst buffer's spare plan and pipelines: two pipelines that start on the same pool are
two rows of the merged plan, and a pipeline's devices count in each of its stages' pools.

(Found in the simulator, bench/pipelines/sim.py: the merge kept one row per (variant, first
pool), so resnet101's plan of 1 x cpu>pascal, 2 x vpu>ampere and 1 x vpu>pascal pipelines ran
one vpu pipeline only, 177 of 339 planned req/s served; spare pipelines were planned on GPUs
the main plan's second stages held.)"""

from __future__ import annotations

from accordion.operator.control.burst import merge_spare, spare_allocation, spare_problem
from accordion.solver import PoolSpec, Problem, ProfilePoint, ServiceSpec, VariantSpec, plan
from accordion.solver.problem import StageSpec


def _points(latency_s: float) -> list[ProfilePoint]:
    return [ProfilePoint(batch_size=1, p50_s=latency_s)]


def _problem(demand_qps: float) -> Problem:
    """Part 1 runs on pool a only, part 2 on b or c; the whole model fits the SLO nowhere."""
    variant = VariantSpec(
        name="m",
        accuracy=90.0,
        profiles={"a": _points(0.3)},
        stages=[
            StageSpec(name="p1", output_bytes=1000, profiles={"a": _points(0.04)}),
            StageSpec(name="p2", profiles={"b": _points(0.04), "c": _points(0.04)}),
        ],
    )
    return Problem(
        pools=[
            PoolSpec(name="a", devices=4),
            PoolSpec(name="b", devices=1),
            PoolSpec(name="c", devices=1),
        ],
        services=[ServiceSpec(name="s", demand_qps=demand_qps, slo_s=0.2, variants=[variant])],
    )


def test_pipelines_on_one_first_pool_stay_two_rows_and_hold_their_stages_devices() -> None:
    problem = _problem(1000.0)
    main = plan(problem)
    pipelines = sorted(r.pipeline or "" for r in main.rows)
    assert len(pipelines) == 2
    assert all(p.startswith("p1..p1@a") for p in pipelines)
    # The spare plan sees only what the main plan leaves: 2 of pool a, none of b or c.
    spare = spare_problem(problem, main, {"s": 50.0})
    assert spare is not None
    assert {p.name: p.devices for p in spare.pools} == {"a": 2, "b": 0, "c": 0}
    merged = merge_spare(main, plan(spare))
    assert sorted(r.pipeline or "" for r in merged.rows) == pipelines
    for row in merged.rows:
        assert [st.replicas for st in row.stages] == [
            row.replicas * st.devices_per_replica for st in row.stages
        ]


def test_a_spare_pipeline_is_the_spare_plans_running_pipeline_not_a_whole_variant() -> None:
    """The spare plan avoids moving the spare replicas in force (`in_force`): a spare pipeline
    replica is named as that pipeline, not as a whole variant on its first pool (the planner
    keys running replicas by pipeline too)."""
    problem = _problem(1000.0)
    main = plan(problem)
    row = main.rows[0]
    assert row.pipeline
    previous = main.model_copy(
        update={"rows": [row.model_copy(update={"spare_replicas": 1}), *main.rows[1:]]}
    )
    spare = spare_problem(problem, main, {"s": 50.0}, spare_allocation(previous))
    assert spare is not None
    assert [(a.variant, a.pool, a.pipeline, a.replicas) for a in spare.current] == [
        ("m", row.pool, row.pipeline, 1)
    ]
