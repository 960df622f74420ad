"""The pipelines bench's queueing check, and the planner's pipeline capacity through it.

The bench credits a plan only with what its queueing check serves within the SLO: the check
must see a stage that cannot keep up, and a pipeline planned at its capacity must keep the SLO.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from accordion.solver import Plan, PlanRow, ProfilePoint, SolverStats, VariantSpec, plan
from accordion.solver.plan import PlanStage
from accordion.solver.problem import StageSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.pipelines import run

SIZES = (1, 2, 4, 8)


def _profile(batch1_s: float, growth: float) -> list[ProfilePoint]:
    return [ProfilePoint(batch_size=b, p50_s=batch1_s * (1 + growth * (b - 1))) for b in SIZES]


def _variant() -> VariantSpec:
    """A model of 200 ms on a CPU (whole, it misses the SLO there) and 20 ms (+20% a request)
    on a GPU; its head is a fifth of it."""
    parts = [
        StageSpec(
            name=name,
            output_bytes=100_000,
            profiles={"cpu": _profile(0.2 * f, 1.0), "gpu-pascal": _profile(0.02 * f, 0.2)},
        )
        for name, f in (("head", 0.2), ("tail", 0.8))
    ]
    return VariantSpec(
        name="v",
        accuracy=90,
        profiles={"cpu": _profile(0.2, 1.0), "gpu-pascal": _profile(0.02, 0.2)},
        stages=parts,
    )


def _row(routed_qps: float, cpu_devices: int) -> PlanRow:
    return PlanRow(
        service="s",
        variant="v",
        pool="cpu",
        replicas=1,
        max_batch_size=1,
        capacity_qps_per_replica=0.0,
        capacity_qps=0.0,
        routed_qps=routed_qps,
        accuracy=90,
        pipeline="x",
        stages=[
            PlanStage(
                pool="cpu",
                first="head",
                last="head",
                replicas=cpu_devices,
                devices_per_replica=cpu_devices,
                max_batch_size=1,
                latency_s=0.04,
                output_bytes=100_000,
            ),
            PlanStage(
                pool="gpu-pascal",
                first="tail",
                last="tail",
                replicas=1,
                devices_per_replica=1,
                max_batch_size=8,
                latency_s=0.01 * 2.4,
                output_bytes=0,
            ),
        ],
    )


def _plan(*rows: PlanRow) -> Plan:
    stats = SolverStats(
        status="OPTIMAL",
        solver="test",
        solve_time_s=0.0,
        served_qps=0.0,
        accuracy_term=0.0,
        cost=0.0,
        change=0,
        gap=0.0,
    )
    return Plan(rows=list(rows), stats=stats)


def test_the_check_sees_a_stage_that_cannot_keep_up() -> None:
    # One CPU does the head at 25 req/s: at 12 req/s nearly everything is in time, at 75 req/s
    # (three times what it can do) at most its 25 req/s are.
    easy = run.queueing_check(_plan(_row(12.0, 1)), _variant(), 120.0)
    assert easy.within_slo / easy.arrivals > 0.97
    hard = run.queueing_check(_plan(_row(75.0, 1)), _variant(), 120.0)
    assert hard.within_slo / 120.0 <= 25.0 * 1.02
    # Five CPUs keep up with 75 req/s.
    wide = run.queueing_check(_plan(_row(75.0, 5)), _variant(), 120.0)
    assert wide.within_slo / wide.arrivals > 0.97
    assert wide.busy_s_by_pool["cpu"] > 0


def test_pipelines_planned_at_capacity_keep_the_slo() -> None:
    # The bench's cluster, demand beyond what it can serve: every planned row runs at its
    # capacity (times the default 0.9 margin), and the check serves nearly all of it in time.
    result = plan(run.problem(_variant(), 10_000.0, stages=2))
    assert any(r.pipeline for r in result.rows)
    check = run.queueing_check(result, _variant(), 60.0)
    assert check.within_slo / check.arrivals > 0.95


def test_whole_replicas_and_a_pipeline_stage_on_the_same_devices_queue_alike() -> None:
    # Four CPUs of 40 ms a request at 95% load: as whole replicas (a 40-ms model) or as the
    # first stage of a pipeline whose second stage keeps up easily. Every device is a worker
    # with its own queue, fed in turn, in both: neither side gets a shared queue (an M/D/4,
    # better than the workers have) nor a random pick (an M/D/1 at 95%, worse than the
    # router's round-robin).
    fast = VariantSpec(name="v", accuracy=90, profiles={"cpu": _profile(0.04, 1.0)})
    whole = PlanRow(
        service="s",
        variant="v",
        pool="cpu",
        replicas=4,
        max_batch_size=1,
        capacity_qps_per_replica=25.0,
        capacity_qps=100.0,
        routed_qps=95.0,
        accuracy=90,
    )
    alone = run.queueing_check(_plan(whole), fast, 120.0)
    staged = run.queueing_check(_plan(_row(95.0, 4)), _variant(), 120.0)
    served, staged_served = (c.within_slo / c.arrivals for c in (alone, staged))
    assert served > 0.98
    assert staged_served > 0.95
    # The same queues, and the pipeline's requests still need its second stage after them.
    assert served >= staged_served
    assert alone.busy_s_by_pool["cpu"] > 0.9 * 95 * 120 * 0.04


def test_the_fluid_bound_caps_every_plan_and_counts_whole_replicas_exactly() -> None:
    # Whole variants only (no parts): every device of the cluster runs a whole replica, so the
    # bound is what the planner plans.
    whole = _variant().model_copy(update={"stages": []})
    planned = plan(run.problem(whole, 10_000.0, stages=1)).services[0].served_qps
    assert run.fluid_bound_qps(whole, 2) == pytest.approx(planned, rel=1e-6)
    # With its parts, pipelines add to that, and no plan goes beyond the bound.
    bound = run.fluid_bound_qps(_variant(), 2)
    piped = plan(run.problem(_variant(), 10_000.0, stages=2)).services[0].served_qps
    assert planned < piped <= bound * (1 + 1e-6)
    assert run.fluid_bound_qps(_variant(), 3) >= bound * (1 - 1e-9)
