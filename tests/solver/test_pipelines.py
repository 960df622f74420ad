"""Pipeline options: a variant cut into stages on different pools, planned with whole variants."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from accordion.solver import (
    Allocation,
    PlannerSettings,
    PlanRow,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
    plan,
)
from accordion.solver.pipelines import pipeline_options
from accordion.solver.problem import StageSpec

SIZES = (1, 2, 4, 8)


def _profile(batch1_s: float, growth: float) -> list[ProfilePoint]:
    """Batch b takes batch1_s * (1 + growth * (b - 1)): growth 1 is a CPU (no gain)."""
    return [ProfilePoint(batch_size=b, p50_s=batch1_s * (1 + growth * (b - 1))) for b in SIZES]


# The whole model: 100 ms per request on a CPU, 40 ms at batch 1 on a GPU that batches well.
CPU = (0.1, 1.0)
GPU = (0.04, 0.4)


def _variant(
    fractions: tuple[float, ...] = (0.3, 0.3, 0.4), output_bytes: int = 100_000
) -> VariantSpec:
    parts = [
        StageSpec(
            name=f"part{i}",
            output_bytes=output_bytes,
            profiles={
                "cpu": _profile(CPU[0] * f, CPU[1]),
                "gpu": _profile(GPU[0] * f, GPU[1]),
            },
        )
        for i, f in enumerate(fractions)
    ]
    return VariantSpec(
        name="big",
        accuracy=80,
        profiles={"cpu": _profile(*CPU), "gpu": _profile(*GPU)},
        stages=parts,
    )


def _problem(
    demand: float,
    cpus: int = 20,
    gpus: int = 2,
    *,
    max_stages: int = 2,
    variant: VariantSpec | None = None,
    current: list[Allocation] | None = None,
) -> Problem:
    return Problem(
        pools=[
            PoolSpec(name="cpu", devices=cpus, cost_per_device=1.0),
            PoolSpec(name="gpu", devices=gpus, cost_per_device=5.0),
        ],
        services=[
            ServiceSpec(name="s", demand_qps=demand, slo_s=0.3, variants=[variant or _variant()])
        ],
        current=current or [],
        settings=PlannerSettings(
            latency_percentile="p50", utilization=1.0, pipeline_max_stages=max_stages
        ),
    )


def _devices_used(result_rows: list[PlanRow]) -> Counter[str]:
    used: Counter[str] = Counter()
    for row in result_rows:
        stages = row.stages
        if stages:
            for stage in stages:
                used[stage.pool] += stage.replicas
        else:
            used[row.pool] += row.replicas
    return used


def test_a_pipeline_serves_more_than_whole_variants_on_a_cpu_rich_cluster() -> None:
    # Whole variants: the GPUs fit batch 4 (2 x 88 ms <= 300 ms): 45 req/s each, the CPUs 10.
    whole = plan(_problem(400, max_stages=1))
    assert all(r.pipeline is None for r in whole.rows)
    assert whole.services[0].served_qps == pytest.approx(2 * 4 / 0.088 + 20 * 10, rel=1e-6)
    piped = plan(_problem(400))
    pipelines = [r for r in piped.rows if r.pipeline is not None]
    assert pipelines, "the CPUs should run the head of the model for the GPUs"
    assert piped.services[0].served_qps > whole.services[0].served_qps * 1.03
    assert piped.services[0].effective_accuracy == whole.services[0].effective_accuracy == 80
    assert _devices_used(piped.rows) <= Counter(cpu=20, gpu=2)
    for row in pipelines:
        assert [s.pool for s in row.stages][-1] == "gpu"
        assert row.pool == row.stages[0].pool
        # Capacity is the slowest stage group's; the worst case keeps the SLO.
        groups = [s.devices_per_replica * s.max_batch_size / s.latency_s for s in row.stages]
        assert row.capacity_qps_per_replica == pytest.approx(min(groups))
        worst = sum(2 * s.latency_s for s in row.stages)
        worst += sum(0.0005 + s.max_batch_size * s.output_bytes / 1.25e9 for s in row.stages[:-1])
        assert worst <= 0.3
        assert row.stages[-1].output_bytes == 0


def test_the_transfer_counts_against_the_slo() -> None:
    # 40 MB per request over 10 Gb/s is 32 ms a request: every sending device's link carries
    # 31 req/s at most, and a batch of 8 (256 ms on the wire) breaks the SLO.
    fat = _problem(400, variant=_variant(output_bytes=40_000_000))
    assert pipeline_options(fat)
    for o in pipeline_options(fat):
        first = o.stages[0]
        assert o.capacity_qps <= first.devices * 1.25e9 / 40_000_000 + 1e-9
        assert first.max_batch_size < 8
    thin = max(o.capacity_qps for o in pipeline_options(_problem(400)))
    assert thin > 100


def test_a_slow_handover_rules_pipelines_out() -> None:
    # 200 ms to hand a batch on leaves 100 ms for both stages twice over: no split fits,
    # whole variants still do.
    slow = _problem(400).model_copy(
        update={
            "settings": PlannerSettings(
                latency_percentile="p50", utilization=1.0, transfer_overhead_s=0.2
            )
        }
    )
    assert pipeline_options(slow) == []
    assert plan(slow).services[0].served_qps > 0

    # 10 MB a request (8 ms on the wire each): a batch of 8 handed on costs 64 ms, which the
    # GPU head at batch 8 cannot afford; with no bytes to hand on it can.
    def gpu_heads(problem: Problem) -> set[int]:
        return {
            o.stages[0].max_batch_size for o in pipeline_options(problem) if o.stages[0].pool == 1
        }

    assert 8 in gpu_heads(_problem(400, variant=_variant(output_bytes=0)))
    assert 8 not in gpu_heads(_problem(400, variant=_variant(output_bytes=10_000_000)))


def test_no_pipeline_without_stages_or_when_disabled() -> None:
    plain = VariantSpec(name="big", accuracy=80, profiles={"cpu": _profile(*CPU)})
    assert pipeline_options(_problem(400, variant=plain)) == []
    assert pipeline_options(_problem(400, max_stages=1)) == []


def test_three_stages_when_allowed() -> None:
    opts = pipeline_options(_problem(400, max_stages=3))
    lengths = {len(o.stages) for o in opts}
    assert 2 in lengths
    # Three stages alternate pools (cpu > gpu > cpu) or are not offered.
    for o in opts:
        pools = [s.pool for s in o.stages]
        assert all(a != b for a, b in itertools.pairwise(pools))


def test_a_replan_keeps_the_running_pipeline() -> None:
    first = plan(_problem(300))
    current = [
        Allocation(
            service=r.service,
            variant=r.variant,
            pool=r.pool,
            replicas=r.replicas,
            pipeline=r.pipeline,
        )
        for r in first.rows
    ]
    again = plan(_problem(300, current=current))
    assert again.stats.change == 0
    assert [(r.pipeline, r.replicas) for r in again.rows] == [
        (r.pipeline, r.replicas) for r in first.rows
    ]


def test_stage_specs_are_checked_at_the_edge() -> None:
    with pytest.raises(ValidationError, match="at least 2"):
        VariantSpec(name="v", accuracy=1, stages=[StageSpec(name="only")])
    with pytest.raises(ValidationError, match="duplicate stage names"):
        VariantSpec(name="v", accuracy=1, stages=[StageSpec(name="a"), StageSpec(name="a")])
    bad = _variant().model_copy(
        update={
            "stages": [
                StageSpec(name="a", profiles={"tpu": _profile(0.1, 1)}),
                StageSpec(name="b"),
            ]
        }
    )
    with pytest.raises(ValidationError, match=r"variants\[0\]\.stages\[0\]\.profiles\.tpu"):
        Problem.model_validate(
            {
                **_problem(1).model_dump(),
                "services": [
                    {"name": "s", "demand_qps": 1, "slo_s": 1, "variants": [bad.model_dump()]}
                ],
            }
        )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.floats(0, 2000), st.integers(0, 30), st.integers(0, 6), st.integers(2, 3))
def test_plans_with_pipelines_stay_within_every_pool(
    demand: float, cpus: int, gpus: int, stages: int
) -> None:
    problem = _problem(demand, cpus, gpus, max_stages=stages)
    result = plan(problem)
    assert _devices_used(result.rows) <= Counter(cpu=cpus, gpu=gpus)
    svc = result.services[0]
    assert svc.served_qps <= demand + 1e-6
    for row in result.rows:
        assert row.routed_qps <= row.capacity_qps + 1e-6
        for stage in row.stages:
            assert stage.replicas == stage.devices_per_replica * row.replicas
    whole = plan(_problem(demand, cpus, gpus, max_stages=1))
    # Pipelines are options besides whole variants: never less served.
    assert svc.served_qps >= whole.services[0].served_qps * (1 - 1e-3) - 1e-6


def test_no_pipeline_that_whole_replicas_beat() -> None:
    # The GPU runs the whole model at batch 8 in 19 ms (421 req/s); a pipeline's head on 8
    # CPUs feeds one GPU at 160 req/s at most: more of every pool per request than the GPU.
    fast_gpu = VariantSpec(
        name="big",
        accuracy=80,
        profiles={"cpu": _profile(*CPU), "gpu": _profile(0.005, 0.4)},
        stages=[
            StageSpec(
                name=f"part{i}",
                profiles={"cpu": _profile(0.05, 1.0), "gpu": _profile(0.0025, 0.4)},
            )
            for i in range(2)
        ],
    )
    assert pipeline_options(_problem(400, variant=fast_gpu)) == []
    assert pipeline_options(_problem(400))  # the default model's pipelines do pay
