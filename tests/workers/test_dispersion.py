"""The router's burstiness meter (`dispersion`) and its report (`reporting.Reporter`)."""

from __future__ import annotations

import asyncio
import random

import pytest

from accordion.workers.config import Backend, RouterReport, RoutingTable
from accordion.workers.dispersion import BIN_S, DispersionMeter, variance_share
from accordion.workers.loadgen import poisson_schedule
from accordion.workers.reporting import Reporter, Window

TABLE = RoutingTable(
    service="svc",
    namespace="ns",
    slo_ms=100.0,
    backends=[
        Backend(name="b", url="http://127.0.0.1:1", model_name="m", weight=1.0, accuracy=0.8)
    ],
)


def poisson(rate: float, seconds: float, seed: int = 1) -> list[float]:
    return poisson_schedule(rate, seconds, seed)


def on_off(rate: float, seconds: float, seed: int = 2) -> list[float]:
    """Bursts: 4x the rate for a quarter of each second, nothing the rest of it."""
    return [a for a in poisson(4 * rate, seconds, seed) if a % 1.0 < 0.25]


def measure(times: list[float]) -> tuple[float, float]:
    meter = DispersionMeter()
    meter.add(0.0, 0)
    for t in times:
        meter.add(t)
    meter.add(times[-1] + 0.2, 0)  # close the last bin
    value = meter.value()
    assert value is not None
    return value


def test_poisson_arrivals_have_an_index_of_one_and_their_rate() -> None:
    dispersion, rate = measure(poisson(200.0, 60.0))
    assert dispersion == pytest.approx(1.0, abs=0.15)
    assert rate == pytest.approx(200.0, rel=0.05)


def test_bursts_raise_the_index() -> None:
    dispersion, rate = measure(on_off(200.0, 60.0))
    # 4x for a quarter second: counts per 0.1 s are 0 or ~80 around a block mean of ~20.
    assert dispersion > 20
    assert rate == pytest.approx(200.0, rel=0.1)


def test_a_step_of_the_rate_is_not_a_burst() -> None:
    # 40 -> 400 req/s: the control loop follows it; only the variation within 2 s blocks counts.
    times = poisson(40.0, 30.0, seed=3) + [30.0 + t for t in poisson(400.0, 30.0, seed=4)]
    dispersion, _ = measure(times)
    assert dispersion < 1.5


def test_phases_the_demand_estimate_follows_are_not_bursts() -> None:
    """50 and 250 req/s in turns of 4 s: the loop's demand estimate (measured every second,
    rising with a half-life of 2 s) follows each turn, so the batching model must not size
    replicas for them again (the sparse trace's diurnal service: 5 s blocks read phases of
    0.5-2 s as bursts on top of an estimate that had already risen to them)."""
    times: list[float] = []
    for turn in range(15):
        rate = 250.0 if turn % 2 else 50.0
        times += [4.0 * turn + t for t in poisson(rate, 4.0, seed=10 + turn)]
    meter = DispersionMeter()
    meter.add(0.0, 0)
    for t in times:
        meter.add(t)
    meter.add(60.05, 0)  # close the 600th bin: the window is the 60 s of turns
    value = meter.value()
    assert value is not None
    dispersion, rate = value
    assert dispersion < 1.5
    assert rate == pytest.approx(150.0, rel=0.1)


def phased(
    rate: float, cv2: float, seconds: float, phase_s: float, fixed: bool, seed: int
) -> list[float]:
    """Poisson at a gamma-distributed level (mean `rate`, squared CV `cv2`) held for phases of
    `phase_s` (fixed, or exponential of that mean), the first cut at a random point."""
    rng = random.Random(seed)
    t, end, out = 0.0, rng.uniform(0.0, phase_s), list[float]()
    while t < seconds:
        level = rate * rng.gammavariate(1.0 / cv2, cv2)
        while True:
            t += rng.expovariate(level)
            if t >= end:
                break
            out.append(t)
        t, end = end, end + (phase_s if fixed else rng.expovariate(1.0 / phase_s))
    return out


@pytest.mark.parametrize(("phase_s", "fixed"), [(0.5, True), (0.5, False), (0.2, False)])
def test_the_meter_reads_the_share_of_a_phased_rate_variance_its_blocks_see(
    phase_s: float, fixed: bool
) -> None:
    """Phases of 0.2-0.5 s: the meter's cv2 ((index - 1) / (rate * bin)) is `variance_share` of
    the rate's (0.59-0.74 of it here), over 20 minutes of arrivals (the meter's window that
    long) within 8% (3-5% at three seeds each). Shorter phases are mostly within a bin,
    longer ones mostly the block's mean: the share falls either way."""
    cv2 = 0.2
    times = phased(200.0, cv2, 1200.0, phase_s, fixed, seed=7)
    value = DispersionMeter.of(times, window_s=1200.0).value()
    assert value is not None
    dispersion, rate = value
    read = (dispersion - 1.0) / (rate * BIN_S)
    share = variance_share(phase_s, None if fixed else 1)
    assert read / cv2 == pytest.approx(share, rel=0.08)
    assert 0.5 < share < 0.8


def test_the_share_of_short_and_long_phases() -> None:
    """Phases far shorter than a bin average out within it; phases far longer than a block
    are the block's mean: both read little. Erlang sojourns go from the exponential (1 stage)
    to the fixed length as their stages grow."""
    assert variance_share(0.01) < 0.15
    assert variance_share(20.0) < 0.05
    exponential, fixed = variance_share(0.5, 1), variance_share(0.5, None)
    assert exponential < variance_share(0.5, 4) < variance_share(0.5, 16) < fixed
    assert variance_share(0.5, 64) == pytest.approx(fixed, rel=0.01)


def test_traffic_back_from_idle_is_not_a_burst() -> None:
    """A service at zero for a minute, then Poisson at 30 req/s (a session after scale to
    zero): idle blocks are neither variance nor rate. Until ten seconds of traffic there is
    no value; then an index near 1 at the traffic's own rate."""
    meter = DispersionMeter()
    meter.add(0.0, 0)
    meter.add(55.0, 0)
    session = [60.0 + t for t in poisson(30.0, 20.0, seed=5)]
    for t in session:
        if t > 62.0:
            break
        meter.add(t)
    assert meter.value() is None  # two seconds of traffic say nothing yet
    for t in session:
        if t > 62.0:
            meter.add(t)
    meter.add(80.2, 0)
    value = meter.value()
    assert value is not None
    dispersion, rate = value
    assert dispersion == pytest.approx(1.0, abs=0.25)
    assert rate == pytest.approx(30.0, rel=0.15)


def test_no_value_before_ten_seconds_of_bins_or_without_arrivals() -> None:
    meter = DispersionMeter()
    for t in poisson(100.0, 5.0):
        meter.add(t)
    assert meter.value() is None
    idle = DispersionMeter()
    idle.add(0.0, 0)
    idle.add(30.0, 0)
    assert idle.value() is None


def test_a_sampler_that_reads_a_counter_every_bin_measures_the_same() -> None:
    times = on_off(100.0, 40.0)
    by_arrival = measure(times)
    sampled = DispersionMeter()
    total, i, tick = 0, 0, 0.0
    sampled.add(0.0, 0)
    while tick < 40.2:
        tick += 0.1
        last = total
        while i < len(times) and times[i] < tick:
            i += 1
            total += 1
        # A little late, as an event loop is.
        sampled.add(tick + 0.003, total - last)
    value = sampled.value()
    assert value is not None
    assert value[0] == pytest.approx(by_arrival[0], rel=0.05)


def test_the_report_carries_the_dispersion_and_stays_readable_without_it() -> None:
    table = TABLE
    reporter = Reporter(
        "http://127.0.0.1:1/v1/reports",
        table=lambda: table,
        requests_total=lambda: 0,
        adopt=lambda _: None,
    )
    window = Window(10, 1.0, "first")
    quiet = reporter.report(window)
    assert quiet is not None
    assert quiet.arrival_dispersion is None
    body = quiet.model_dump_json(exclude_defaults=True)
    assert "dispersion" not in body  # an older operator sees the report it knows
    reporter.dispersion.add(0.0, 0)
    for t in on_off(100.0, 20.0):
        reporter.dispersion.add(t)
    reporter.dispersion.add(20.2, 0)
    report = reporter.report(window)
    assert report is not None
    assert report.arrival_dispersion is not None
    assert report.arrival_dispersion > 5
    assert report.dispersion_rate_qps == pytest.approx(100.0, rel=0.15)
    again = RouterReport.model_validate_json(report.model_dump_json(exclude_defaults=True))
    assert again.arrival_dispersion == report.arrival_dispersion


async def test_the_reporter_samples_its_counter_every_bin() -> None:
    table = TABLE
    count = [0]
    reporter = Reporter(
        "http://127.0.0.1:1/v1/reports",
        table=lambda: table,
        requests_total=lambda: count[0],
        adopt=lambda _: None,
    )
    sampler = asyncio.create_task(reporter.sample())
    try:
        for _ in range(12):
            count[0] += 5
            await asyncio.sleep(0.1)
    finally:
        sampler.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sampler
    bins = list(reporter.dispersion._bins)
    assert len(bins) >= 8
    assert sum(bins) >= 40
