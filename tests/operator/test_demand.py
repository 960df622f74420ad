"""The demand estimator: follows rises fast, falls slowly, and rejects nonsense."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accordion.operator.control.demand import DemandEstimator, DemandTracker


def test_first_observation_is_taken_as_is() -> None:
    est = DemandEstimator()
    assert est.observe(0.0, 42.0) == 42.0


def test_rise_is_followed_faster_than_a_fall() -> None:
    up, down = DemandEstimator(2.0, 20.0), DemandEstimator(2.0, 20.0)
    up.observe(0, 100.0)
    down.observe(0, 100.0)
    for t in range(1, 5):
        up.observe(t, 200.0)
        down.observe(t, 0.0)
    assert up.estimate_qps is not None
    assert down.estimate_qps is not None
    # After two rise half-lives, 3/4 of the step is taken: 175 req/s.
    assert up.estimate_qps == pytest.approx(175.0)
    # After 4 s of a 20 s half-life, 0.5 ** 0.2 of the old level remains.
    assert down.estimate_qps == pytest.approx(100.0 * 0.5**0.2)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_estimate_stays_within_the_observed_range(rates: list[float]) -> None:
    est = DemandEstimator()
    for t, rate in enumerate(rates):
        value = est.observe(float(t), rate)
        assert min(rates[: t + 1]) - 1e-6 <= value <= max(rates[: t + 1]) + 1e-6


def test_invalid_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        DemandEstimator().observe(0.0, -1.0)
    with pytest.raises(ValueError, match="half-lives"):
        DemandEstimator(rise_half_life_s=0)


def test_tracker_keeps_services_apart_and_forgets() -> None:
    tracker = DemandTracker()
    tracker.observe("ns/a", 0.0, 10.0)
    tracker.observe("ns/b", 0.0, 20.0)
    assert tracker.estimates() == {"ns/a": 10.0, "ns/b": 20.0}
    tracker.forget("ns/a")
    assert tracker.estimates() == {"ns/b": 20.0}
