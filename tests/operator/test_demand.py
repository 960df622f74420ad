"""The demand estimator: follows rises fast, falls slowly, and rejects nonsense."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accordion.operator.control.demand import OVERLOAD_S, DemandEstimator, DemandTracker


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


def falls(tracker: DemandTracker, start_s: float) -> float:
    """ns/a's estimate after its rate falls from 100 to 0 over 2 s from `start_s`."""
    tracker.observe("ns/a", start_s, 100.0)
    tracker.estimators["ns/a"].estimate_qps = 100.0
    tracker.observe("ns/a", start_s + 1.0, 0.0)
    return tracker.observe("ns/a", start_s + 2.0, 0.0)


def test_in_lasting_overload_every_falling_estimate_follows_fast() -> None:
    """Once the plan has been short for `OVERLOAD_S`, a service that is not short itself
    follows a fall with the rise half-life (its stale estimate holds devices the short ones
    need); a shortage that has not lasted (a spike) leaves it on the fall half-life."""
    tracker = DemandTracker(2.0, 20.0)
    tracker.observe("ns/b", 0.0, 100.0)
    tracker.plan_feedback({"ns/a": 200.0, "ns/b": 50.0}, {"ns/b"})
    tracker.observe("ns/b", 1.0, 100.0)  # the shortage begins at 1 s
    # A young shortage: 2 s of the 20 s fall half-life.
    assert falls(tracker, 2.0) == pytest.approx(100.0 * 0.5**0.1)
    tracker.observe("ns/b", 1.0 + OVERLOAD_S, 100.0)
    # A lasting one: 2 s of the 2 s rise half-life, half is left.
    assert falls(tracker, 1.0 + OVERLOAD_S) == pytest.approx(50.0)
    # The shortage ends: slow again, and a new one starts its clock afresh.
    tracker.plan_feedback({"ns/a": 200.0, "ns/b": 200.0}, set())
    assert falls(tracker, 30.0) == pytest.approx(100.0 * 0.5**0.1)
    tracker.plan_feedback({"ns/a": 200.0, "ns/b": 50.0}, {"ns/b"})
    assert falls(tracker, 40.0) == pytest.approx(100.0 * 0.5**0.1)


def test_a_few_arrivals_in_a_very_short_window_are_no_surge() -> None:
    """A wake that reports right after a reading counts over a millisecond or less: one to
    three arrivals there are Poisson noise at 500 req/s, not a surge of thousands (the Gaussian
    bound alone took 1 arrival in 0.1 ms as 10,000 req/s); a real step is still taken at once."""
    for window_s, arrivals in ((0.0001, 1), (0.0001, 3), (0.001, 3), (0.01, 5)):
        tracker = DemandEstimator()
        for t in range(10):
            tracker.observe(float(t), 500.0, capacity_qps=500.0)
        estimate = tracker.observe(9.0 + window_s, arrivals / window_s, capacity_qps=500.0)
        assert estimate < 520.0, (window_s, arrivals, estimate)
        assert tracker.learned_burst() == 0.0
    tracker = DemandEstimator()
    for t in range(10):
        tracker.observe(float(t), 150.0, capacity_qps=200.0)
    assert tracker.observe(10.0, 1050.0, capacity_qps=200.0) == 1050.0  # 7x within a second
