"""Per-service replica bounds (`min_replicas`, `max_replicas`) in the planner, on real OR-Tools."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from accordion.solver import Allocation, Plan, ServiceSpec, plan
from tests.solver.test_planner import FAST, SLOW, _problem, _service, _variant


def _replicas(result: Plan, service: str) -> int:
    return sum(r.replicas for r in result.rows if r.service == service)


def test_an_idle_service_keeps_its_floor() -> None:
    idle = _service("idle", 0.0, min_replicas=2)
    result = plan(_problem([idle], {"gpu": (8, 1.0)}))
    assert _replicas(result, "idle") == 2
    # The floor goes to the most accurate variant (demand-weighted accuracy is moot at 0).
    assert {r.variant for r in result.rows} == {"large"}


def test_no_floor_means_no_replica_for_no_demand() -> None:
    result = plan(_problem([_service("idle", 0.0)], {"gpu": (8, 1.0)}))
    assert _replicas(result, "idle") == 0


def test_the_floor_takes_only_free_devices() -> None:
    """A floor never takes a device another service's demand needs."""
    busy = _service("busy", 16 * 4 - 1, variants=[_variant("large", 90, gpu=SLOW)])
    idle = _service("idle", 0.0, min_replicas=3)
    result = plan(_problem([busy, idle], {"gpu": (5, 1.0)}))
    assert _replicas(result, "busy") == 4
    assert result.services[0].unserved_qps == pytest.approx(0.0, abs=1e-6)
    assert _replicas(result, "idle") == 1


def test_the_floor_keeps_what_runs() -> None:
    """Between passes the floor stays where it is (no churn): the running option first."""
    idle = _service("idle", 0.0, min_replicas=1)
    current = [Allocation(service="idle", variant="small", pool="gpu", replicas=1)]
    result = plan(_problem([idle], {"gpu": (8, 1.0)}, current))
    assert [(r.variant, r.replicas) for r in result.rows] == [("small", 1)]


def test_the_cap_moves_demand_to_faster_variants() -> None:
    """Capped at 2 replicas, 100 req/s fit only on the fast variant: the plan serves it all
    there instead of dropping what the accurate variant cannot carry."""
    capped = _service("capped", 100.0, max_replicas=2)
    result = plan(_problem([capped], {"gpu": (16, 1.0)}))
    assert _replicas(result, "capped") <= 2
    assert result.services[0].unserved_qps == pytest.approx(0.0, abs=1e-6)
    uncapped = plan(_problem([_service("capped", 100.0)], {"gpu": (16, 1.0)}))
    assert _replicas(uncapped, "capped") > 2  # the cap is what bound it
    assert uncapped.services[0].effective_accuracy is not None
    assert result.services[0].effective_accuracy is not None
    assert result.services[0].effective_accuracy < uncapped.services[0].effective_accuracy


def test_the_cap_leaves_a_shortfall_rather_than_more_replicas() -> None:
    capped = _service("capped", 1000.0, max_replicas=3)
    result = plan(_problem([capped], {"gpu": (16, 1.0)}))
    assert _replicas(result, "capped") == 3
    assert result.services[0].unserved_qps == pytest.approx(1000.0 - 3 * 4 / (2.5 * FAST))


def test_the_cap_holds_on_large_problems() -> None:
    """Past the full-MILP size the LP rounding, diving and routing paths run: still capped."""
    services = [
        _service(f"s{i:03d}", 200.0, max_replicas=1 + i % 3, min_replicas=i % 2) for i in range(150)
    ]
    result = plan(_problem(services, {"gpu": (2000, 1.0)}))
    for i, svc in enumerate(services):
        n = _replicas(result, svc.name)
        assert svc.min_replicas <= n <= (1 + i % 3), svc.name


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="max_replicas: 1 is below min_replicas 2"):
        ServiceSpec(
            name="x",
            demand_qps=1.0,
            slo_s=1.0,
            variants=[_variant("small", 70, gpu=FAST)],
            min_replicas=2,
            max_replicas=1,
        )


def test_the_largest_floor_the_api_allows_is_met() -> None:
    """minReplicas at its bound (1,000,000) on as many devices (added in bulk, not one by one)."""
    huge = _service("huge", 0.0, min_replicas=1_000_000)
    result = plan(_problem([huge], {"gpu": (1_000_000, 1.0)}))
    assert _replicas(result, "huge") == 1_000_000
