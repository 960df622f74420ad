"""The planner's MILP stages end on their own work (nodes, gap), not on the clock.

A stage that stops on its time share keeps whatever it found by then, so the same problem got
another plan on a slower or a loaded machine, and the benchmark's figures moved between runs
and machines (bench/proteus/NOTES.md). The first plan of the overload trace is such a problem:
its accuracy stage used to stop on its share of the 2-s polish.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import accordion.solver.planner as planner
from accordion.sim.catalog import make_control_policy
from accordion.sim.engine import SimConfig, simulate
from accordion.sim.workload import load_proteus_cluster, read_rate_trace
from accordion.solver import Plan, Problem

OVERLOAD = Path(__file__).resolve().parents[2] / "bench" / "proteus" / "overload.rates"


def _rows(result: Plan) -> list[tuple[str, str, str, int]]:
    return [(r.service, r.variant, r.pool, r.replicas) for r in result.rows]


def test_the_same_problem_gets_the_same_plan_with_ten_times_the_time(
    proteus_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = load_proteus_cluster(proteus_data, devices_per_pool=10)
    trace = read_rate_trace(OVERLOAD, {f.name: f.slo_s for f in cluster.families})
    config = SimConfig(service_time="p50", end_s=1.0)
    workload = trace.sliced(0.0, config.initial_window_s)  # what the first estimate reads
    captured: list[Problem] = []
    original = planner.plan

    def capture(problem: Problem) -> Plan:
        captured.append(problem)
        return original(problem)

    monkeypatch.setattr(planner, "plan", capture)
    # The loop's first pass, as the product runs it (its settings, its demand estimate).
    simulate(cluster, workload, make_control_policy("accordion"), config)
    monkeypatch.setattr(planner, "plan", original)
    assert captured, "the loop planned nothing"
    problem = captured[0]
    settings = problem.settings
    assert settings.polish_time_s <= 2.0
    unhurried = problem.model_copy(
        update={
            "settings": settings.model_copy(
                update={
                    "polish_time_s": settings.polish_time_s * 10,
                    "time_limit_s": settings.time_limit_s * 10,
                }
            )
        }
    )
    quick = original(problem)
    slow = original(unhurried)
    assert quick.stats.served_qps > 0
    assert _rows(quick) == _rows(slow)
    assert quick.stats.accuracy_term == pytest.approx(slow.stats.accuracy_term, rel=1e-9)
