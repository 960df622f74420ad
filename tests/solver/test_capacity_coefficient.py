"""A replica's capacity coefficient: capped for hostile profiles, its own for ordinary ones.

The cap keeps the LP well scaled when a profile claims billions of requests per second (the
hostile-spec fuzz). It must not reach ordinary problems: there the LP relaxation is what sees
that a faster replica serves the same demand with less of a device, which is what puts a
service on the faster of two equally priced pools, leaving more room for a burst. Capped at
the demand itself (dd7fdd1), that tie fell to the slower pool, and the Proteus benchmark's
violations rose 0.20% -> 0.33% (and the planner-based baselines' too).
"""

from __future__ import annotations

import pytest

from accordion.solver import PoolSpec, Problem, ProfilePoint, ServiceSpec, VariantSpec, plan
from accordion.solver.model import capacity_coefficient


def _service(name: str, demand: float, fast_s: float, slow_s: float) -> ServiceSpec:
    return ServiceSpec(
        name=name,
        demand_qps=demand,
        slo_s=0.3,
        variants=[
            VariantSpec(
                name="v",
                accuracy=90.0,
                profiles={
                    "fast": [ProfilePoint(batch_size=1, p50_s=fast_s)],
                    "slow": [ProfilePoint(batch_size=1, p50_s=slow_s)],
                },
            )
        ],
    )


@pytest.mark.parametrize("order", [("fast", "slow"), ("slow", "fast")])
def test_equal_cost_ties_go_to_the_faster_pool(order: tuple[str, str]) -> None:
    """Two services, each served whole by one replica on either pool at the same cost: both go
    on the fast pool (room for 5x and 10x bursts there, 1x on the slow one)."""
    pools = [PoolSpec(name=name, devices=2) for name in order]
    services = [_service("a", 10.0, 0.01, 0.05), _service("b", 5.0, 0.02, 0.1)]
    got = plan(Problem(pools=pools, services=services))
    assert {(r.service, r.pool, r.replicas) for r in got.rows} == {
        ("a", "fast", 1),
        ("b", "fast", 1),
    }


def test_the_coefficient_is_capped_only_beyond_any_real_profile() -> None:
    assert capacity_coefficient(400.0, 5.0) == 400.0  # a GPU replica for a small service
    assert capacity_coefficient(1e9, 1.0) == 1000.0  # a hostile profile, a small demand
    assert capacity_coefficient(1e9, 1e6) == 1e6
    assert capacity_coefficient(1e9, 5e-324) == 1000.0
    # Never below the demand: the integral problem is the same (r <= demand already).
    for capacity, demand in [(1e9, 2e6), (1e9, 0.5), (50.0, 10.0), (1e7, 3e5)]:
        assert capacity_coefficient(capacity, demand) >= min(capacity, demand)
