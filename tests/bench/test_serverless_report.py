"""The serverless bench's comparison at equal SLO attainment (`bench/serverless/report.py`):
each policy's cost at an attainment is the cheapest its sweep gets there (its Pareto frontier,
interpolated), and none beyond its best."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.serverless.report import at_attainment, frontier


def row(policy: str, attainment: float, device_seconds: float) -> dict[str, object]:
    return {"policy": policy, "attainment": attainment, "device_seconds": device_seconds}


SWEEP = [
    row("k-0.3", 0.995, 3600.0),
    row("k-0.4", 0.993, 3350.0),  # dominated: k-0.5 is cheaper and more attained
    row("k-0.5", 0.994, 3000.0),
    row("k-1", 0.990, 2500.0),
]


def test_the_frontier_drops_points_another_beats_on_both() -> None:
    assert [p for _, _, p in frontier(SWEEP)] == ["k-1", "k-0.5", "k-0.3"]


def test_cost_is_interpolated_on_the_frontier_and_none_beyond_its_best() -> None:
    # Between k-0.5 (0.994, 3000) and k-0.3 (0.995, 3600), a quarter of the way.
    cost, how = at_attainment(SWEEP, 0.99425)
    assert cost == pytest.approx(3150.0)
    assert "k-0.5" in how
    assert "k-0.3" in how
    # 0.993 lies between k-1 and k-0.5 on the frontier (k-0.4's 3350 is not the cost there).
    cost, _ = at_attainment(SWEEP, 0.993)
    assert cost == pytest.approx(2500.0 + 0.75 * 500.0)
    cost, how = at_attainment(SWEEP, 0.996)
    assert cost is None
    assert "NEVER" in how
    # Below every point: its cheapest.
    cost, _ = at_attainment(SWEEP, 0.98)
    assert cost == 2500.0
