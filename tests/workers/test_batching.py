"""Batching policies under a deterministic clock: a tiny discrete-event driver, no wall clock."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from accordion.workers.batching import (
    BatchingPolicy,
    ClipperAimd,
    LatencyPredictor,
    NoBatching,
    ReplayOutcome,
    Request,
    SloBatcher,
    SlowdownMeter,
    TritonDynamicBatcher,
    make_policy,
    replay,
)
from accordion.workers.config import BatchingConfig, interpolate_profile


def affine(base_s: float, per_item_s: float) -> Callable[[int], float]:
    return lambda b: base_s + per_item_s * b


def simulate(
    policy: BatchingPolicy,
    arrivals_s: list[float],
    slo_s: float,
    true_latency: Callable[[int], float],
) -> ReplayOutcome:
    """Drive a policy exactly as the worker loop does, on simulated time."""
    return replay(
        policy, [Request(i, t, t + slo_s) for i, t in enumerate(arrivals_s)], true_latency
    )


def poisson(rate: float, n: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


LAT = affine(0.004, 0.001)  # 5 ms alone, 36 ms for 32: throughput 889/s at b=32
PROFILE = {b: LAT(b) for b in (1, 2, 4, 8, 16, 32)}
SLO = 0.100


def slo_batcher(
    profile: dict[int, float] | None = None, cap: int = 32, lazy: bool = False
) -> SloBatcher:
    return SloBatcher(cap, LatencyPredictor(profile or PROFILE), margin_s=0.0, lazy=lazy)


def test_predictor_interpolates_and_extrapolates() -> None:
    p = LatencyPredictor({1: 0.010, 4: 0.016})
    assert p.predict_s(1) == pytest.approx(0.010)
    assert p.predict_s(2) == pytest.approx(0.012)
    assert p.predict_s(8) == pytest.approx(0.024)


def test_predictor_converges_to_observed_and_resists_outliers() -> None:
    p = LatencyPredictor({1: 0.005, 8: 0.010}, window=32, quantile=0.9)
    rng = random.Random(3)
    for k in range(200):
        latency = 0.020 * (1 + 0.05 * rng.random())
        if k % 25 == 0:
            latency = 2.0  # a stall
        p.observe(8, latency)
    assert 0.020 <= p.predict_s(8) <= 0.022
    # Unobserved sizes are corrected by the same factor (2x here).
    assert p.predict_s(1) == pytest.approx(0.005 * p.predict_s(8) / 0.010, rel=0.01)


def test_predictor_tail_covers_what_the_typical_prediction_misses() -> None:
    p = LatencyPredictor({8: 0.010})
    rng = random.Random(7)
    for _ in range(300):
        p.observe(8, 0.010 * math.exp(rng.gauss(0.0, 0.2)))
    fresh = [0.010 * math.exp(rng.gauss(0.0, 0.2)) for _ in range(2000)]
    over_typical = sum(x > p.predict_s(8) for x in fresh) / len(fresh)
    over_safe = sum(x > p.safe_s(8) for x in fresh) / len(fresh)
    assert over_typical > 0.15  # the p75 of the window: about a quarter of batches exceed it
    assert over_safe < 0.13  # the tail-aware fit: its quantile (0.9) of the error
    assert LatencyPredictor({1: 0.01}).safe_s(1) == pytest.approx(0.01)  # no data: no tail


def test_predictor_is_monotone_in_batch_size() -> None:
    p = LatencyPredictor({1: 0.010, 2: 0.009, 4: 0.020})
    values = [p.predict_s(b) for b in range(1, 10)]
    assert values == sorted(values)


def test_slo_batcher_chooses_largest_feasible_batch() -> None:
    policy = slo_batcher()
    for k in range(40):
        policy.enqueue(Request(k, 0.0, 0.100), 0.0)
    decision = policy.decide(0.0)
    assert len(decision.batch) == 32
    policy.complete(32, LAT(32), LAT(32))
    # Now tight: the earliest deadline leaves 10 ms => largest b with 4+b ms <= 10 ms is 6.
    policy2 = slo_batcher()
    for k in range(10):
        policy2.enqueue(Request(k, 0.0, 0.010 + 0.001 * k), 0.0)
    d2 = policy2.decide(0.0)
    assert len(d2.batch) == 6
    assert [r.request_id for r in d2.batch] == list(range(6))  # EDF order


def test_slo_batcher_does_not_wait_at_low_load() -> None:
    policy = slo_batcher(lazy=True)
    policy.enqueue(Request(0, 0.0, 0.100), 0.0)
    assert len(policy.decide(0.0).batch) == 1


def test_slo_batcher_waits_lazily_but_not_past_a_deadline() -> None:
    policy = slo_batcher(lazy=True)
    for k in range(500):  # a recent arrival rate of 500/s: batches of 1 cannot keep up
        policy.enqueue(Request(k, k * 0.002, 10.0), k * 0.002)
    while policy.queue_depth:
        size = len(policy.decide(1.0).batch)
        policy.complete(size, LAT(size), 1.0)
    policy.enqueue(Request(0, 1.0, 1.100), 1.0)
    d = policy.decide(1.0)
    assert not d.batch
    assert d.wake_at_s == pytest.approx(1.100 - LAT(2) - policy.lazy_reserve * 0.100)
    # At the wake-up time it dispatches what it has.
    assert d.wake_at_s is not None
    d = policy.decide(d.wake_at_s)
    assert len(d.batch) == 1
    assert d.wake_at_s is None


def test_slo_batcher_drops_only_hopeless_requests_with_reason() -> None:
    policy = slo_batcher()
    policy.enqueue(Request(0, 0.0, 0.003), 0.0)  # needs 5 ms alone: hopeless
    policy.enqueue(Request(1, 0.0, 0.0051), 0.0)  # just makes it alone
    d = policy.decide(0.0)
    assert [x.request.request_id for x in d.dropped] == [0]
    assert "even alone" in d.dropped[0].reason
    assert [r.request_id for r in d.batch] == [1]


def test_slo_batcher_drops_while_busy_what_cannot_run_after_current_batch() -> None:
    policy = slo_batcher()
    for k in range(32):
        policy.enqueue(Request(k, 0.0, 0.100), 0.0)
    assert len(policy.decide(0.0).batch) == 32  # busy until ~36 ms
    policy.enqueue(Request(99, 0.001, 0.030), 0.001)
    d = policy.decide(0.001)
    assert [x.request.request_id for x in d.dropped] == [99]
    assert not d.batch


@pytest.mark.parametrize("lazy", [False, True])
@pytest.mark.parametrize("rate", [50.0, 300.0, 700.0])
def test_slo_batcher_meets_every_deadline_under_sustainable_load(rate: float, lazy: bool) -> None:
    out = simulate(slo_batcher(lazy=lazy), poisson(rate, 3000), SLO, LAT)
    assert out.late == 0
    assert out.dropped == 0
    assert out.ok == 3000


def test_slo_batcher_batches_more_at_higher_load() -> None:
    low = simulate(slo_batcher(), poisson(100.0, 1000), SLO, LAT)
    high = simulate(slo_batcher(), poisson(700.0, 3000), SLO, LAT)
    assert sum(high.batch_sizes) / len(high.batch_sizes) > sum(low.batch_sizes) / len(
        low.batch_sizes
    )


def test_slo_batcher_calibrates_a_wrong_profile() -> None:
    # The profile claims half the true latency; after calibration no request is late.
    wrong = {b: LAT(b) / 2 for b in PROFILE}
    policy = slo_batcher(wrong)
    simulate(policy, poisson(300.0, 2000, seed=5), SLO, LAT)
    assert policy.predicted_latency_s(8) == pytest.approx(LAT(8), rel=0.05)
    out = simulate(policy, poisson(300.0, 3000, seed=6), SLO, LAT)
    assert out.late == 0


def test_slo_batcher_keeps_goodput_under_overload() -> None:
    sustainable = 700.0
    out = simulate(slo_batcher(), poisson(2 * sustainable, 6000), SLO, LAT)
    duration = 6000 / (2 * sustainable)
    goodput = out.ok / duration
    assert out.late == 0
    assert goodput >= 0.9 * sustainable


def test_baselines_follow_their_rules() -> None:
    none = NoBatching()
    for k in range(3):
        none.enqueue(Request(k, 0.0, 1.0), 0.0)
    assert len(none.decide(0.0).batch) == 1
    assert not none.decide(0.0).batch  # busy

    triton = TritonDynamicBatcher(8, 0.005, preferred_batch_sizes=[4])
    triton.enqueue(Request(0, 0.0, 1.0), 0.0)
    d = triton.decide(0.0)
    assert not d.batch
    assert d.wake_at_s == pytest.approx(0.005)
    for k in range(1, 4):
        triton.enqueue(Request(k, 0.001, 1.0), 0.001)
    assert len(triton.decide(0.001).batch) == 4  # preferred size reached
    triton.complete(4, 0.001, 0.002)
    triton.enqueue(Request(9, 0.002, 1.0), 0.002)
    assert triton.decide(0.007).batch  # max_queue_delay elapsed

    clipper = ClipperAimd(16, latency_objective_s=0.020)
    for k in range(40):
        clipper.enqueue(Request(k, 0.0, 1.0), 0.0)
    sizes = []
    for _ in range(5):
        b = clipper.decide(0.0).batch
        sizes.append(len(b))
        clipper.complete(len(b), 0.010, 0.0)
    assert sizes == [1, 2, 3, 4, 5]
    b = clipper.decide(0.0).batch
    clipper.complete(len(b), 0.050, 0.0)  # too slow: multiplicative decrease
    assert clipper.cap < 6


def test_make_policy_from_config() -> None:
    assert isinstance(make_policy(BatchingConfig(policy="none"), {}, 0.1), NoBatching)
    assert isinstance(make_policy(BatchingConfig(policy="triton"), {}, 0.1), TritonDynamicBatcher)
    assert isinstance(make_policy(BatchingConfig(policy="clipper"), {}, 0.1), ClipperAimd)
    assert isinstance(make_policy(BatchingConfig(), {1: 0.01}, 0.1), SloBatcher)


def test_slo_batcher_escapes_the_small_batch_spiral_under_overload() -> None:
    # Slower than profiled (like a contended CPU) and 3x beyond capacity: early drop keeps
    # goodput near the capacity that fits the SLO instead of spiralling into tiny batches.
    slow = affine(0.008, 0.003)  # capacity within a 100 ms SLO: b=14 at 50 ms => 280/s
    policy = slo_batcher(PROFILE)
    warm = simulate(policy, poisson(900.0, 2000, seed=3), SLO, slow)  # corrects the profile
    assert warm.ok > 0
    out = simulate(policy, poisson(900.0, 9000, seed=4), SLO, slow)
    goodput = out.ok / (9000 / 900.0)
    assert goodput >= 0.85 * 280
    assert out.late <= 0.01 * out.total
    assert any("early drop" in r for r in out.reasons)


def test_no_batching_baseline_collapses_under_the_same_overload() -> None:
    slow = affine(0.008, 0.003)
    out = simulate(NoBatching(), poisson(900.0, 3000, seed=4), SLO, slow)
    assert out.ok < 0.05 * out.total


def test_replay_times_a_known_schedule() -> None:
    # Two requests 1 ms apart, 4 ms each alone: the second waits for the first.
    out = replay(NoBatching(), [Request(0, 0.0, 0.005), Request(1, 0.001, 0.006)], lambda b: 0.004)
    assert (out.ok, out.late, out.dropped) == (1, 1, 0)
    assert out.response_s == pytest.approx([0.004, 0.007])
    assert out.batch_sizes == [1, 1]
    assert out.attainment == 0.5


def test_slowdown_meter_reports_its_quantile_after_enough_batches() -> None:
    meter = SlowdownMeter({1: 0.01, 2: 0.02}, window=15, quantile=0.9, min_samples=3)  # 10 ms x b
    meter.observe(1, 0.02, 0.0)
    meter.observe(4, 0.08, 0.1)
    assert meter.value(0.1) is None  # thin data: nothing to say
    meter.observe(2, 0.03, 0.2)
    assert meter.value(0.2) == pytest.approx(2.0)  # ratios 2, 2, 1.5: never the largest alone
    # Against the profile at each batch's own size, whatever the size; the window keeps the last 15.
    for k in range(15):
        meter.observe(1 + k % 8, 0.013 * (1 + k % 8), 0.3 + k * 0.01)
    assert meter.value(0.5) == pytest.approx(1.3)
    # One stall among the window moves nothing.
    meter.observe(8, 0.8, 0.6)
    assert meter.value(0.6) == pytest.approx(1.3)
    # Samples age out: after the horizon with no batch, there is nothing to say.
    assert meter.value(0.6 + 10.5) is None


def test_one_profile_reading_for_batcher_router_and_simulator() -> None:
    profile = {2: 10.0, 4: 14.0, 8: 30.0}
    assert interpolate_profile(profile, 1) == 10.0  # below the smallest: its value
    assert interpolate_profile(profile, 3) == pytest.approx(12.0)  # linear between
    assert interpolate_profile(profile, 8) == 30.0
    assert interpolate_profile(profile, 10) == pytest.approx(38.0)  # the last slope beyond
    assert interpolate_profile({4: 8.0}, 8) == pytest.approx(16.0)  # one size: proportional
    assert interpolate_profile({4: 8.0}, 2) == 8.0
    assert interpolate_profile({1: 5.0, 4: 4.0}, 9) == 4.0  # a falling end is not extended
    with pytest.raises(ValueError, match="at least one batch size"):
        interpolate_profile({}, 1)
    # The batcher's base curve and the router's profile reading are this function.
    assert LatencyPredictor(profile).base_s(10) == interpolate_profile(profile, 10)
