"""The batching model (`queueing`) against the SLO batcher itself, replayed on simulated time.

The replay (`batching.replay`) drives the worker's own `SloBatcher` with Poisson or bursty
arrivals and execution times drawn around the profile; the model must predict its p99 latency
within 10%, and the rate it plans for must keep the p99 within the SLO without giving away
much of the device."""

from __future__ import annotations

import dataclasses
import random
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from accordion.sim.engine import dist_quantile
from accordion.solver import (
    Burstiness,
    PlannerSettings,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
)
from accordion.solver.capacity import batch_capacity, options
from accordion.solver.queueing import RequestOverhead, latency_quantile_s, max_rate_qps
from accordion.workers.batching import LatencyPredictor, Request, SloBatcher, replay

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.serverless.worker_model import IdleTracking

CAP = 16
SLO_S = 0.05
SIZES = (1, 2, 4, 8, 16)


def p50_s(batch_size: float) -> float:
    return 0.004 + 0.001 * batch_size


# The profile a user would measure of the simulator's execution times (`dist_quantile`).
POINTS = [
    ProfilePoint(
        batch_size=b,
        p50_s=p50_s(b),
        p90_s=1.1 * p50_s(b),
        p99_s=dist_quantile(p50_s(b), 1.1 * p50_s(b), 0.99),
    )
    for b in SIZES
]


def execution_s(rng: random.Random, batch_size: int) -> float:
    """An execution time as the simulator draws it."""
    return dist_quantile(p50_s(batch_size), 1.1 * p50_s(batch_size), rng.random())


def arrivals(rate: float, cv2: float, n: int, seed: int, phase_s: float = 0.5) -> list[float]:
    """Poisson at a rate that is lognormal with squared coefficient of variation cv2, held for
    exponential phases of mean `phase_s` (a quasi-static MMPP; cv2 0: plain Poisson)."""
    rng = random.Random(seed)
    sigma = float(np.sqrt(np.log1p(cv2)))
    t, out = 0.0, list[float]()
    while len(out) < n:
        g = float(np.exp(sigma * rng.gauss(0, 1) - sigma * sigma / 2)) if cv2 > 0 else 1.0
        end = t + rng.expovariate(1 / phase_s)
        while True:
            t += rng.expovariate(rate * g)
            if t > end:
                t = end
                break
            out.append(t)
    return out[:n]


def measured(rate: float, cv2: float, seeds: int = 4) -> tuple[float, float]:
    """(p99 latency of answered requests, attainment of SLO_S) of the replayed batcher, over
    `seeds` runs of 50,000 requests (bursty runs differ by which rate levels they draw)."""
    response: list[float] = []
    for seed in range(1, seeds + 1):
        rng = random.Random(seed)
        times = arrivals(rate, cv2, 50_000, seed)
        requests = [Request(i, a, a + 10.0) for i, a in enumerate(times)]
        predictor = LatencyPredictor({p.batch_size: p.p50_s for p in POINTS})
        out = replay(SloBatcher(CAP, predictor), requests, partial(execution_s, rng))
        response += out.response_s
    values = np.asarray(response)
    return float(np.percentile(values, 99)), float(np.mean(values <= SLO_S))


@pytest.mark.parametrize(
    ("rate", "cv2"), [(300, 0.0), (500, 0.0), (650, 0.0), (200, 0.1), (300, 0.1)]
)
def test_predicted_p99_within_10_percent_of_the_replayed_batcher(rate: float, cv2: float) -> None:
    predicted = latency_quantile_s(POINTS, CAP, rate, cv2, 0.99)
    p99, _ = measured(rate, cv2)
    assert predicted == pytest.approx(p99, rel=0.10)


@pytest.mark.parametrize("rate", [120, 400])
def test_the_per_request_overhead_of_the_path_is_in_the_prediction(rate: float) -> None:
    """A worker behind HTTP: each request costs 0.4 ms of the batch's time (parsing, answering)
    and 3 ms of round trip, and a batch that starts on an idle device runs 4 ms longer than the
    profile. The model with that overhead stays within 10% of the batcher replayed with it; the
    device's profile alone is far below (what a real worker showed), and so is the model
    without the idle device's part, at the lower rate (more batches start on an idle device)."""
    overhead = RequestOverhead(fixed_s=0.003, per_request_s=0.0004, cold_batch_s=0.004)
    response: list[float] = []
    for seed in (1, 2):
        rng = random.Random(seed)
        times = arrivals(rate, 0.0, 40_000, seed)
        requests = [Request(i, a, a + 10.0) for i, a in enumerate(times)]
        policy = IdleTracking(CAP, LatencyPredictor({p.batch_size: p.p50_s for p in POINTS}))

        def stretched(b: int, rng: random.Random = rng, policy: IdleTracking = policy) -> float:
            cold = overhead.cold_batch_s if policy.idle else 0.0
            return execution_s(rng, b) + b * overhead.per_request_s + cold

        out = replay(policy, requests, stretched)
        response += [r + overhead.fixed_s for r in out.response_s]
    p99 = float(np.percentile(response, 99))
    assert latency_quantile_s(POINTS, CAP, rate, 0.0, 0.99, overhead) == pytest.approx(
        p99, rel=0.10
    )
    assert latency_quantile_s(POINTS, CAP, rate, 0.0, 0.99) < 0.85 * p99
    if rate < 300:
        warm = dataclasses.replace(overhead, cold_batch_s=0.0)
        assert latency_quantile_s(POINTS, CAP, rate, 0.0, 0.99, warm) < 0.9 * p99


STEP_MS = {1: 7.7, 2: 15.0, 3: 22.3, 4: 16.9, 5: 19.5, 6: 19.5, 7: 22.2, 8: 20.6}
"""demo-xl's execution on a 2-core CPU (ms, p50 per batch size, 04:37 UTC 12-04): not monotone,
the CPU kernels switch algorithms with the batch size (a batch of 4 runs faster than one of 3)."""


def curve_points(ms: dict[int, float]) -> list[ProfilePoint]:
    """The profile a user would measure of executions with p50 `ms` per batch size (as the
    simulator draws them, p90 10% above)."""
    return [
        ProfilePoint(
            batch_size=b,
            p50_s=v / 1e3,
            p90_s=1.1 * v / 1e3,
            p99_s=dist_quantile(v, 1.1 * v, 0.99) / 1e3,
        )
        for b, v in ms.items()
    ]


def replayed_p99(ms: dict[int, float], rate: float, cv2: float) -> float:
    """The SLO batcher's p99 (s) over 4 x 20,000 arrivals, executions with p50 `ms`."""
    points = curve_points(ms)

    def curve_execution_s(rng: random.Random, b: int) -> float:
        return dist_quantile(ms[b] / 1e3, 1.1 * ms[b] / 1e3, rng.random())

    response: list[float] = []
    for seed in range(1, 5):
        rng = random.Random(seed)
        requests = [
            Request(i, a, a + 10.0) for i, a in enumerate(arrivals(rate, cv2, 20_000, seed))
        ]
        predictor = LatencyPredictor({p.batch_size: p.p50_s for p in points})
        response += replay(
            SloBatcher(len(ms), predictor), requests, partial(curve_execution_s, rng)
        ).response_s
    return float(np.percentile(response, 99))


@pytest.mark.parametrize(("rate", "cv2"), [(150, 0.0), (270, 0.0), (150, 0.1)])
def test_a_profile_that_is_not_monotone_is_the_devices_curve(rate: float, cv2: float) -> None:
    """The device runs a batch of 4 in 16.9 ms though a batch of 3 takes 22.3: the model takes
    the profile as the device's execution per size (made non-decreasing, every batch of 4-8
    counted 22.3 ms, and the model was 10-45% above the replayed batcher at these rates)."""
    p99 = replayed_p99(STEP_MS, rate, cv2)
    points = curve_points(STEP_MS)
    assert latency_quantile_s(points, len(STEP_MS), rate, cv2, 0.99) == pytest.approx(p99, rel=0.10)


STAIRS_MS = {1: 9.7, 2: 10.2, 3: 10.9, 4: 19.6, 5: 20.7, 6: 21.5, 7: 29.1, 8: 29.9}
"""demo-xl's execution on another 2-core CPU (ms, 2026-12-06): in stairs, 1-3 as fast as one."""


@pytest.mark.parametrize("rate", [50, 170])
def test_a_request_rides_in_the_batch_its_arrivals_behind_it_make(rate: float) -> None:
    """On a curve in stairs a request's batch of 3 or of 4 is 10.9 or 19.6 ms: the model
    weighs each size its own batch may have by the Poisson arrivals behind it while it waits
    (rounding their mean up, it was +7.1% and +5.2% above the replay here; now -1.3%, +3.1%)."""
    p99 = replayed_p99(STAIRS_MS, rate, 0.0)
    points = curve_points(STAIRS_MS)
    assert latency_quantile_s(points, len(STAIRS_MS), rate, 0.0, 0.99) == pytest.approx(
        p99, rel=0.05
    )


def modulated(rate: float, cv2: float, n: int, seed: int, phase_s: float) -> list[float]:
    """An MMPP: Poisson at a gamma-distributed rate (mean `rate`, squared CV `cv2`) held for
    exponential phases of mean `phase_s`, each phase's level drawn afresh."""
    rng = random.Random(seed)
    shape = 1.0 / cv2
    t, out = 0.0, list[float]()
    while len(out) < n:
        level = rate * rng.gammavariate(shape, 1.0 / shape)
        end = t + rng.expovariate(1.0 / phase_s)
        while True:
            t += rng.expovariate(level)
            if t > end:
                t = end
                break
            out.append(t)
    return out[:n]


@pytest.mark.parametrize(("rate", "cv2", "phase_s"), [(300, 0.2, 0.2), (350, 0.2, 0.1)])
def test_a_backlog_built_above_the_throughput_drains_in_the_next_phases(
    rate: float, cv2: float, phase_s: float
) -> None:
    """Bursts above the device's throughput (800 req/s here) that last a fraction of a second:
    the quasi-static model counts each such phase as a queue that never settles (its p99 past
    every latency it tabulates), the replayed batcher drains the backlog in the phases after.
    With the phases' mean length the model carries the queue across phases and predicts the
    replay's p99 within 15% (8 x 50,000 requests: a few phases above the throughput decide
    the p99; over 24 x 50,000 the model was -2.1% and +0.6% here, and +20% at 450 req/s with
    cv2 0.1 and phases of 0.2 s, where 8-seed blocks of the replay ranged 51-72 ms)."""
    response: list[float] = []
    for seed in range(1, 9):
        rng = random.Random(seed)
        times = modulated(rate, cv2, 50_000, 1000 + seed, phase_s)
        requests = [Request(i, a, a + 10.0) for i, a in enumerate(times)]
        predictor = LatencyPredictor({p.batch_size: p.p50_s for p in POINTS})
        response += replay(
            SloBatcher(CAP, predictor), requests, partial(execution_s, rng)
        ).response_s
    p99 = float(np.percentile(response, 99))
    transient = latency_quantile_s(POINTS, CAP, rate, cv2, 0.99, phase_s=phase_s)
    assert transient == pytest.approx(p99, rel=0.15)
    assert latency_quantile_s(POINTS, CAP, rate, cv2, 0.99) > 2 * p99


def test_long_phases_are_the_quasi_static_limit() -> None:
    """Phases long against the queue's settling time: each level's queue settles, the carried
    backlog is the quasi-static model's. Phases of a few batches (0.05 s) are below it
    (23.8 -> 22.6 ms: a level's queue does not settle within them)."""
    quasi = latency_quantile_s(POINTS, CAP, 300, 0.1, 0.99)
    assert latency_quantile_s(POINTS, CAP, 300, 0.1, 0.99, phase_s=100.0) == pytest.approx(
        quasi, rel=0.05
    )
    assert latency_quantile_s(POINTS, CAP, 300, 0.1, 0.99, phase_s=0.05) < 0.97 * quasi


def test_the_planned_rate_keeps_the_p99_and_uses_the_device() -> None:
    poisson = max_rate_qps(POINTS, CAP, SLO_S, "p99", Burstiness(dispersion=1.0, rate_qps=100))
    assert poisson is not None
    throughput = CAP / POINTS[-1].p50_s
    # ... yet within the SLO for 99% of requests, and 20% more is not.
    _, attained = measured(poisson, 0.0)
    assert attained >= 0.985
    _, over = measured(1.2 * poisson, 0.0)
    assert over < 0.99
    assert poisson < throughput


def test_burstier_arrivals_get_less_capacity_and_still_keep_the_p99() -> None:
    rates = []
    for dispersion in (1.0, 2.0, 6.0):
        burst = Burstiness(dispersion=dispersion, window_s=0.1, rate_qps=100.0)
        rate = max_rate_qps(POINTS, CAP, SLO_S, "p99", burst)
        assert rate is not None
        rates.append(rate)
    assert rates[0] > rates[1] > rates[2]
    # cv2 = (2 - 1) / (100 x 0.1) = 0.1: slow bursts at the planned rate keep the SLO.
    _, attained = measured(rates[1], 0.1)
    assert attained >= 0.985


def test_the_planner_uses_the_model_only_when_burstiness_is_measured() -> None:
    def problem(**service: object) -> Problem:
        variant = VariantSpec(name="v", accuracy=80, profiles={"gpu": POINTS})
        spec = ServiceSpec(name="s", demand_qps=100, slo_s=SLO_S, variants=[variant], **service)
        return Problem(pools=[PoolSpec(name="gpu", devices=4)], services=[spec])

    def capacity(**service: object) -> float:
        opts, _ = options(problem(**service))
        return opts[0].capacity_qps

    # The rule's batch cap: 2 x p99(b) within the SLO.
    fit = batch_capacity(POINTS, SLO_S, "p99", PlannerSettings().utilization)
    assert fit is not None
    margin = capacity()
    assert margin == pytest.approx(fit[1])
    poisson = Burstiness(dispersion=1.0, rate_qps=100)
    modelled = capacity(burstiness=poisson)
    assert modelled == max_rate_qps(POINTS, fit[0], SLO_S, "p99", poisson)
    assert modelled > 1.1 * margin
    # An explicit margin (the loop's overload re-plan: 1.0) wins over the model.
    assert capacity(burstiness=poisson, utilization=1.0) == pytest.approx(
        fit[1] / PlannerSettings().utilization
    )
