"""The planner's behaviour on small problems: limits, objectives in order, and reporting."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accordion.solver import (
    Allocation,
    PlannerSettings,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
    plan,
)
from accordion.solver.capacity import options
from accordion.solver.model import StagedModel
from accordion.solver.rounding import repair_deficits


def _profile(batch1_s: float) -> list[ProfilePoint]:
    """Batch b takes batch1_s * (1 + (b - 1) / 2): batching pays, with diminishing returns."""
    return [ProfilePoint(batch_size=b, p50_s=batch1_s * (1 + 0.5 * (b - 1))) for b in (1, 2, 4)]


def _variant(name: str, accuracy: float, **pools: float) -> VariantSpec:
    return VariantSpec(
        name=name, accuracy=accuracy, profiles={p: _profile(s) for p, s in pools.items()}
    )


def _problem(
    services: list[ServiceSpec],
    pools: dict[str, tuple[int, float]],
    current: list[Allocation] | None = None,
) -> Problem:
    return Problem(
        pools=[PoolSpec(name=n, devices=d, cost_per_device=c) for n, (d, c) in pools.items()],
        services=services,
        current=current or [],
        settings=PlannerSettings(utilization=1.0, latency_percentile="p50"),
    )


# With SLO 1 s, batch 4 (2.5 x batch1) fits when 5 * batch1 <= 1: capacity 4 / (2.5 b1).
FAST = 0.01  # 160 QPS per replica at batch 4
SLOW = 0.1  # 16 QPS per replica at batch 4


def _service(name: str, demand: float, **kw: object) -> ServiceSpec:
    fields: dict[str, object] = {
        "name": name,
        "demand_qps": demand,
        "slo_s": 1.0,
        "variants": [_variant("small", 70, gpu=FAST), _variant("large", 90, gpu=SLOW)],
    }
    return ServiceSpec.model_validate({**fields, **kw})


services_strategy = st.lists(
    st.tuples(st.floats(0, 400), st.integers(1, 3), st.floats(0, 95)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services_strategy, st.integers(0, 12))
def test_plans_stay_within_devices_capacity_and_floors(
    specs: list[tuple[float, int, float]], devices: int
) -> None:
    problem = _problem(
        [
            _service(f"s{i}", demand, priority=prio, accuracy_floor=floor)
            for i, (demand, prio, floor) in enumerate(specs)
        ],
        {"gpu": (devices, 1.0)},
    )
    result = plan(problem)
    assert sum(r.replicas for r in result.rows) <= devices
    for row in result.rows:
        assert row.routed_qps <= row.capacity_qps + 1e-6
        assert row.capacity_qps == row.replicas * row.capacity_qps_per_replica
    by_name = {s.name: s for s in problem.services}
    for row in result.rows:
        assert row.accuracy >= by_name[row.service].accuracy_floor
    for sp in result.services:
        assert math.isclose(sp.served_qps + sp.unserved_qps, sp.demand_qps, abs_tol=1e-6)
        assert sp.served_qps <= sp.capacity_qps + 1e-6


@settings(max_examples=25, deadline=None)
@given(st.lists(st.just(0.0) | st.floats(0.001, 300), min_size=1, max_size=4))
def test_all_demand_is_served_when_the_cluster_can(demands: list[float]) -> None:
    # (Demand below the solvers' tolerances, a relative 1e-6 of the total, is noise: excluded.)
    # One fast replica serves 160 QPS: give each service enough devices for its demand alone.
    devices = sum(math.ceil(d / 160) for d in demands)
    problem = _problem(
        [_service(f"s{i}", d) for i, d in enumerate(demands)], {"gpu": (devices, 1.0)}
    )
    result = plan(problem)
    for sp in result.services:
        assert sp.unserved_qps <= 1e-6 * max(1.0, sp.demand_qps)


def test_accuracy_is_maximized_once_demand_is_served() -> None:
    # 32 QPS: two slow, accurate replicas serve it all; the fast variant is not needed.
    result = plan(_problem([_service("a", 32)], {"gpu": (2, 1.0)}))
    assert [(r.variant, r.replicas) for r in result.rows] == [("large", 2)]
    assert result.services[0].effective_accuracy == 90


def test_serving_more_beats_accuracy() -> None:
    # 100 QPS on 2 devices: only the fast variant can serve it all.
    result = plan(_problem([_service("a", 100)], {"gpu": (2, 1.0)}))
    assert result.services[0].unserved_qps <= 1e-6
    assert {r.variant for r in result.rows} >= {"small"}


def test_target_caps_accuracy_and_spares_devices() -> None:
    # Target 70: the large variant is worth no more than the small one, which needs 1 device.
    result = plan(_problem([_service("a", 32, accuracy_target=70)], {"gpu": (4, 1.0)}))
    assert sum(r.replicas for r in result.rows) == 1
    assert result.rows[0].variant == "small"


def test_floor_excludes_variants_and_reports_shortfall() -> None:
    svc = _service("a", 100, accuracy_floor=80)
    result = plan(_problem([svc], {"gpu": (2, 1.0)}))
    assert {r.variant for r in result.rows} == {"large"}
    assert math.isclose(result.services[0].unserved_qps, 100 - 32, rel_tol=1e-6)
    assert result.services[0].floor_met


def test_no_variant_at_the_floor_serves_nothing() -> None:
    result = plan(_problem([_service("a", 10, accuracy_floor=95)], {"gpu": (2, 1.0)}))
    assert result.rows == []
    assert result.services[0].unserved_qps == 10
    assert not result.services[0].floor_met
    assert result.services[0].effective_accuracy is None


def test_infeasible_demand_reports_shortfall_by_priority() -> None:
    problem = _problem([_service("low", 200), _service("high", 200, priority=2)], {"gpu": (1, 1.0)})
    result = plan(problem)
    served = {s.service: s.served_qps for s in result.services}
    assert math.isclose(served["high"], 160, rel_tol=1e-6)
    assert served["low"] == 0
    assert result.stats.status in ("OPTIMAL", "FEASIBLE")


def test_pairs_missing_the_slo_at_batch_one_are_excluded() -> None:
    svc = _service("a", 10, variants=[_variant("ok", 80, gpu=FAST), _variant("tardy", 90, gpu=0.6)])
    result = plan(_problem([svc], {"gpu": (2, 1.0)}))
    assert [(e.variant, e.pool) for e in result.excluded] == [("tardy", "gpu")]
    assert "SLO" in result.excluded[0].reason
    assert {r.variant for r in result.rows} == {"ok"}


def test_max_batch_size_is_the_largest_batch_within_the_slo() -> None:
    # Batch 4 takes 2.5 * 0.1 = 0.25 s: worst case 0.5 s fits an SLO of 0.5 s but not 0.4 s.
    for slo_s, expected in ((0.5, 4), (0.4, 2)):
        result = plan(_problem([_service("a", 5, slo_s=slo_s)], {"gpu": (1, 1.0)}))
        assert result.rows[0].max_batch_size == expected


def test_cost_minimization_prefers_cheap_pools_and_releases_devices() -> None:
    svc = _service("a", 100, variants=[_variant("v", 80, cheap=FAST, dear=FAST)])
    result = plan(_problem([svc], {"cheap": (4, 1.0), "dear": (4, 3.0)}))
    assert [(r.pool, r.replicas) for r in result.rows] == [("cheap", 1)]
    assert result.stats.cost == 1.0


def test_change_minimization_keeps_the_current_plan_when_equally_good() -> None:
    svc = _service("a", 100, variants=[_variant("v", 80, gpu1=FAST, gpu2=FAST)])
    for pool in ("gpu1", "gpu2"):
        current = [Allocation(service="a", variant="v", pool=pool, replicas=1)]
        result = plan(_problem([svc], {"gpu1": (2, 1.0), "gpu2": (2, 1.0)}, current))
        assert [(r.pool, r.replicas) for r in result.rows] == [(pool, 1)]
        assert result.stats.change == 0


def test_same_input_gives_the_same_plan() -> None:
    problem = _problem(
        [_service(f"s{i}", 37.0 * i + 5, priority=1 + i % 2) for i in range(5)],
        {"gpu": (7, 1.0)},
    )
    assert plan(problem).model_dump(exclude={"stats"}) == plan(problem).model_dump(
        exclude={"stats"}
    )
    first, second = plan(problem).stats, plan(problem).stats
    assert first.model_copy(update={"solve_time_s": 0}) == second.model_copy(
        update={"solve_time_s": 0}
    )


def test_empty_problem_gives_empty_plan() -> None:
    result = plan(Problem(pools=[], services=[]))
    assert result.rows == []
    assert result.services == []


def test_large_problems_keep_every_limit() -> None:
    # Over 400 options: the rounding, diving and windowed-MILP path, near full load.
    variants = [
        _variant(f"v{i}", 60 + 10 * i, gpu=0.002 * (i + 1), cpu=0.02 * (i + 1)) for i in range(4)
    ]
    services = [
        _service(f"s{i:02d}", 150.0 + 37 * (i % 7), priority=1 + i % 3, variants=variants)
        for i in range(60)
    ]
    problem = Problem(
        pools=[
            PoolSpec(name="gpu", devices=30, cost_per_device=3),
            PoolSpec(name="cpu", devices=120),
        ],
        services=services,
        settings=PlannerSettings(utilization=1.0, latency_percentile="p50", polish_time_s=0.5),
    )
    result = plan(problem)
    for pool in problem.pools:
        assert sum(r.replicas for r in result.rows if r.pool == pool.name) <= pool.devices
    for row in result.rows:
        assert row.routed_qps <= row.capacity_qps + 1e-6
    assert result.stats.status in ("OPTIMAL", "FEASIBLE")
    assert 0 <= result.stats.gap < 0.1
    served = sum(s.served_qps for s in result.services)
    assert math.isclose(
        served + sum(s.unserved_qps for s in result.services), sum(s.demand_qps for s in services)
    )


def test_replanning_the_same_problem_changes_nothing() -> None:
    problem = _problem(
        [_service(f"s{i}", 23.0 * i + 9, priority=1 + i % 2) for i in range(6)],
        {"gpu": (9, 1.0)},
    )
    first = plan(problem)
    running = [
        Allocation(service=r.service, variant=r.variant, pool=r.pool, replicas=r.replicas)
        for r in first.rows
    ]
    second = plan(problem.model_copy(update={"current": running}))
    assert second.stats.change == 0
    assert [(r.service, r.variant, r.pool, r.replicas) for r in second.rows] == [
        (r.service, r.variant, r.pool, r.replicas) for r in first.rows
    ]


def test_repair_covers_a_shortfall_at_the_least_accuracy_lost() -> None:
    """One service 15 req/s short on two devices of slow replicas (16 req/s each): a medium
    replica instead of a slow one adds 9.6 req/s and costs 2 points on the 16 req/s it moves,
    a fast one adds the whole 15 at 20 points; the repair takes the medium variant, twice (2 x
    25.6 req/s, nothing short), never the fast one."""
    variants = [
        _variant("slow", 99, gpu=0.1),  # 16 req/s per replica
        _variant("medium", 97, gpu=0.0625),  # 25.6
        _variant("fast", 79, gpu=0.01),  # 160
    ]
    svc = ServiceSpec(name="s", demand_qps=47.0, slo_s=1.0, variants=variants)
    problem = _problem([svc], {"gpu": (2, 1.0)})
    opts, _ = options(problem)
    index = {o.variant: k for k, o in enumerate(opts)}
    start = [0] * len(opts)
    start[index["slow"]] = 2
    repaired = repair_deficits(problem, opts, start)
    assert {o.variant: repaired[k] for k, o in enumerate(opts) if repaired[k]} == {"medium": 2}
    # Nothing short: nothing moves.
    enough = svc.model_copy(update={"demand_qps": 30.0})
    problem = _problem([enough], {"gpu": (2, 1.0)})
    assert repair_deficits(problem, opts, start) == start


SOLVER_BENCH = Path(__file__).parents[2].parent / "shared" / "data" / "proteus"


@pytest.mark.skipif(not SOLVER_BENCH.exists(), reason="shared Proteus data not available")
def test_a_large_loaded_cluster_keeps_its_accuracy() -> None:
    """The solver benchmark's 4,000 devices, 180 services at load 5, at the default settings:
    the greedy fill from nothing serves every request at accuracy 82.6; the rounding serves
    99.8% at 99.3. Serving more wins the first stage, so the plan was the greedy fill's (gap
    16.9%) until the rounding's shortfalls were repaired with faster variants (99.93% served
    at 99.22)."""
    from bench.solver import problems

    result = plan(problems.build(1000, 180, 5, PlannerSettings()))
    demand = sum(s.demand_qps for s in result.services)
    served = sum(s.served_qps for s in result.services)
    accuracy = sum((s.effective_accuracy or 0.0) * s.served_qps for s in result.services)
    assert served >= demand * (1 - PlannerSettings().relative_gap)
    assert accuracy / served >= 99.0
    assert result.stats.gap <= 0.01


def test_the_accuracy_stage_may_trade_served_within_served_keep() -> None:
    """One device, 100 req/s: the fast variant serves it all at 70, the slow one 95 at 99.
    Served first, exactly, takes the fast one; with `served_keep` 0.1 (the large problems'
    polish keeps served within the gap goal, as `_better` ties candidates) the accuracy stage
    may give up 5 req/s for 29 points."""
    fast = VariantSpec(
        name="fast", accuracy=70, profiles={"gpu": [ProfilePoint(batch_size=1, p50_s=0.01)]}
    )
    slow = VariantSpec(
        name="slow",
        accuracy=99,
        profiles={"gpu": [ProfilePoint(batch_size=1, p50_s=1 / 95)]},
    )
    svc = ServiceSpec(name="s", demand_qps=100.0, slo_s=1.0, variants=[fast, slow])
    problem = _problem([svc], {"gpu": (1, 1.0)})
    opts, _ = options(problem)
    chosen = {}
    for keep in (0.0, 0.1):
        model = StagedModel(problem, opts, {}, integer=True)
        solution, _ = model.run_stages(time.perf_counter() + 10, None, 2, served_keep=keep)
        chosen[keep] = {o.variant for o, n in zip(opts, solution.n, strict=True) if n > 0.5}
    assert chosen == {0.0: {"fast"}, 0.1: {"slow"}}


def test_the_polish_window_holds_the_lp_counts_and_the_incumbent() -> None:
    """One replica either side of the LP's count, and wide enough for the incumbent, which the
    MILP gets as its hint (a hint outside the bounds is no start at all)."""
    from accordion.solver.planner import window

    assert window([2.4, 0.0, 7.0], [2.0, 5.0, 1.0]) == [(1, 4), (0, 5), (1, 8)]


def test_routing_over_the_options_with_replicas_is_the_full_routing() -> None:
    """`_routed` builds its LP over the options given replicas only; its stage values and its
    solution are those of the LP over every option (bounded to zero where none are given),
    running replicas of the options left out counted as removed in the change stage."""
    from accordion.solver.planner import _current_by_option, _routed

    services = [_service(f"s{i}", 30.0 * i + 20, priority=1 + i % 2) for i in range(5)]
    pools = {"gpu": (6, 1.0)}
    running = [
        Allocation(service="s0", variant="large", pool="gpu", replicas=2),
        Allocation(service="s3", variant="small", pool="gpu", replicas=1),
    ]
    problem = _problem(services, pools, running)
    opts, _ = options(problem)
    current, _ = _current_by_option(problem, opts)
    given = [0] * len(opts)
    for k, o in enumerate(opts):
        if o.variant == "small" and problem.services[o.service].name != "s3":
            given[k] = 1  # s3's running small replica is left out: removed
    assert sum(given) == 4
    deadline = time.perf_counter() + 10
    sub, sub_result = _routed(problem, opts, current, given, deadline)
    full_model = StagedModel(problem, opts, current, integer=False, bounds=[(0, v) for v in given])
    full, full_result = full_model.run_stages(deadline, None)
    assert sub_result.values == pytest.approx(full_result.values, rel=1e-6, abs=1e-6)
    assert sub_result.values[-1] >= 3  # s0's two large and s3's small replica removed
    assert sub.r == pytest.approx(full.r, abs=1e-6)
    assert all(n == 0 for n, g in zip(sub.n, given, strict=True) if g == 0)
    # No replica at all: scored as the full model scores it (every demand unserved), not as
    # a model without options (every stage 0).
    zero = [0] * len(opts)
    _, none_result = _routed(problem, opts, current, zero, deadline)
    empty = StagedModel(problem, opts, current, integer=False, bounds=[(0, 0)] * len(opts))
    assert none_result.values == pytest.approx(empty.run_stages(deadline, None)[1].values)
    assert none_result.values[0] < 0


def _point(batch: int, p50_s: float) -> dict[str, float]:
    return {"batch_size": batch, "p50_s": p50_s}


# Two hostile tenants next to a healthy service (the operator's problem from
# tests/operator/test_hostile_specs.py): capacity coefficients from 0.02 to 1e6 req/s and a
# served value of 3.5e6 in the same model.
EXTREME = {
    "pools": [{"name": "reserved", "devices": 2}, {"name": "shared", "devices": 4}],
    "services": [
        {
            "name": "healthy/steady",
            "demand_qps": 66.0,
            "slo_s": 0.1,
            "variants": [
                {"name": "big", "accuracy": 80.0, "profiles": {"reserved": [_point(1, 0.02)]}},
                {"name": "small", "accuracy": 70.0, "profiles": {"reserved": [_point(1, 0.005)]}},
            ],
        },
        {
            "name": "team-x/a",
            "demand_qps": 0.125,
            "slo_s": 600.0,
            "variants": [{"name": "a", "accuracy": 0.0, "profiles": {"shared": [_point(1, 1e-6)]}}],
        },
        {
            "name": "team-x/b",
            "demand_qps": 3555.0,
            "slo_s": 600.0,
            "priority": 10,
            "variants": [
                {"name": "a", "accuracy": 0.0},
                {
                    "name": "c",
                    "accuracy": 0.0,
                    "profiles": {
                        "shared": [
                            {"batch_size": 1, "p50_s": 1e-6, "p90_s": 1e-6},
                            {"batch_size": 2, "p50_s": 0.001, "p99_s": 78.13},
                        ]
                    },
                },
            ],
        },
    ],
    "current": [{"service": "healthy/steady", "variant": "big", "pool": "reserved", "replicas": 2}],
}


def test_a_stage_that_fails_after_a_keep_is_retried_with_a_looser_keep() -> None:
    """Held to 1e-9 of itself, the served stage left GLOP no solution to the accuracy stage
    here, and the plan was the served stage's alone: the healthy service lost its accurate
    variant to tenants it shares nothing with. Loosened (`KEEP_RETRY`), every stage solves."""
    from accordion.solver.planner import _current_by_option

    problem = Problem.model_validate(EXTREME)
    opts, _ = options(problem)
    current, _ = _current_by_option(problem, opts)
    model = StagedModel(problem, opts, current, integer=False)
    _, result = model.run_stages(time.perf_counter() + 10, None)
    assert result.statuses == ["OPTIMAL"] * 5
    assert result.loosened >= 1
    assert result.values[1] == pytest.approx(66.0 * 80.0)  # the healthy service's accuracy
    rows = [r for r in plan(problem).rows if r.service == "healthy/steady" and r.replicas]
    assert [(r.variant, r.replicas) for r in rows] == [("big", 2)]


def test_every_kept_row_is_loosened_when_a_later_stage_finds_nothing() -> None:
    """On the bursty trace a routing LP found nothing at its last stage (change) under the
    additions row kept two stages before. Here the last stage finds nothing for as long as
    the first kept row (served) is as tight as it was kept: it must be loosened too, not only
    the row of the stage just before."""
    problem = _problem([_service("a", 120.0), _service("b", 60.0)], {"gpu": (4, 1.0)})
    opts, _ = options(problem)
    model = StagedModel(problem, opts, {}, integer=False)
    rows: list[tuple[Any, float]] = []
    keep, solve = model.keep, model.solve

    def keeping(*args: Any, **kwargs: Any) -> Any:
        row = keep(*args, **kwargs)
        rows.append((row.constraint, row.constraint.lb()))
        return row

    def solving(*args: Any, **kwargs: Any) -> Any:
        served, tight = rows[0] if rows else (None, None)
        if len(rows) >= 4 and served is not None and served.lb() == tight:
            return None  # numerically stuck until the served row is loose
        return solve(*args, **kwargs)

    model.keep = keeping  # type: ignore[method-assign]
    model.solve = solving  # type: ignore[method-assign]
    _, result = model.run_stages(time.perf_counter() + 10, None)
    assert result.statuses == ["OPTIMAL"] * 5
    assert result.loosened == 1
    assert rows[0][0].lb() < rows[0][1]
