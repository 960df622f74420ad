"""The fair-share floor in overload: every service keeps a share of its demand, and no more.

One pool of 10 devices, a cheap service (160 req/s per replica) with twice what the pool can
serve and a dear one (16 req/s per replica) with 20 devices' worth. Serving the most requests
alone would give the dear service nothing; the floor (`PlannerSettings.fair_share` of its
demand) keeps it served in part, and costs the cheap service only that share.
"""

from __future__ import annotations

import math

from accordion.solver import PlannerSettings, PoolSpec, Problem, ServiceSpec, plan
from tests.solver.test_planner import FAST, SLOW, _variant

CHEAP_QPS = 3200.0  # 2x the pool's 10 x 160
DEAR_QPS = 320.0  # 20 replicas at 16


def _overload(settings: PlannerSettings) -> dict[str, tuple[int, float]]:
    """Per service: replicas planned and QPS served."""
    services = [
        ServiceSpec(
            name="cheap",
            demand_qps=CHEAP_QPS,
            slo_s=1.0,
            variants=[_variant("small", 70, gpu=FAST)],
        ),
        ServiceSpec(
            name="dear",
            demand_qps=DEAR_QPS,
            slo_s=1.0,
            variants=[_variant("large", 90, gpu=SLOW)],
        ),
    ]
    result = plan(
        Problem(
            pools=[PoolSpec(name="gpu", devices=10, cost_per_device=1.0)],
            services=services,
            settings=settings,
        )
    )
    replicas = {s.name: 0 for s in services}
    for row in result.rows:
        replicas[row.service] += row.replicas
    return {s.service: (replicas[s.service], s.served_qps) for s in result.services}


DEFAULTS = PlannerSettings(utilization=1.0, latency_percentile="p50")


def test_in_overload_the_dear_service_keeps_its_share() -> None:
    out = _overload(DEFAULTS)
    replicas, served = out["dear"]
    assert replicas >= 1
    assert served >= DEFAULTS.fair_share * DEAR_QPS - 1e-6


def test_the_floor_costs_no_more_than_its_share() -> None:
    """The floor takes the replicas its share needs and no more: the rest serve the cheap one."""
    for share in (0.05, 0.1, 0.2):
        out = _overload(DEFAULTS.model_copy(update={"fair_share": share}))
        dear = math.ceil(share * DEAR_QPS / 16.0 - 1e-9)  # 16 req/s per replica
        assert out["dear"][0] == dear, share
        assert out["cheap"] == (10 - dear, (10 - dear) * 160.0), share


def test_without_a_floor_serving_the_most_starves_the_dear_service() -> None:
    out = _overload(DEFAULTS.model_copy(update={"fair_share": 0.0}))
    assert out["dear"] == (0, 0.0)
    assert out["cheap"] == (10, 1600.0)
