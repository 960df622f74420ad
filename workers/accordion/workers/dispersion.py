"""How bursty a router's arrivals are: the index of dispersion of its arrival counts.

Why: the planner sizes replicas with a model of the SLO batcher (`accordion.solver.queueing`)
that needs to know how bursty the arrivals are, beyond their rate. The index of dispersion of
counts, variance / mean of the number of arrivals per `bin_s` (0.1 s) over the last `window_s`
(60 s), each bin against its 2 s block's mean (`DispersionMeter.value`), is 1 for Poisson
arrivals and grows with burstiness; it costs the router one counter read per bin and 600
integers. The router samples its request counter every bin
(`Reporter`), the simulator adds each arrival: the same object, so both measure alike.
"""

from __future__ import annotations

import math
from collections import deque

BIN_S = 0.1
"""Length of one counting bin."""
WINDOW_S = 60.0
"""Bins over this long make one measurement."""
BLOCK_S = 2.0
"""Counts vary around the mean of their block of this long (see `DispersionMeter.value`): the
control loop's demand estimate, measured every second and rising with a half-life of 2 s
(`accordion.operator.control.timing.Timings`), follows slower variation itself; counting it here
too sized a diurnal service's phases of 0.5-2 s twice (bench/results/serverless.md)."""
MIN_BINS = 100
"""No value from fewer bins (10 s): the variance of a few counts says little."""


class DispersionMeter:
    """Arrival counts per bin over a sliding window; their variance / mean on demand.

    `add(now_s, count)` counts `count` arrivals in the bin that holds `now_s` (bins are
    anchored at the first call, so a sampler that calls once per bin, a little late, still fills
    one bin per call); bins skipped without a call count zero arrivals.
    """

    def __init__(
        self, bin_s: float = BIN_S, window_s: float = WINDOW_S, min_bins: int = MIN_BINS
    ) -> None:
        if bin_s <= 0 or window_s < bin_s:
            raise ValueError("bin_s must be > 0 and window_s >= bin_s")
        self.bin_s = bin_s
        self._bins: deque[int] = deque(maxlen=max(1, round(window_s / bin_s)))
        self._min_bins = min_bins
        self._origin_s: float | None = None
        self._index = 0
        self._current = 0
        self._sum = 0

    @classmethod
    def of(cls, times: list[float], window_s: float = WINDOW_S) -> DispersionMeter:
        """A meter that has counted arrivals at `times` (seconds from 0, sorted), its last bin
        closed: what a router's would read of them (benchmarks and tests)."""
        meter = cls(window_s=window_s)
        meter.add(0.0, 0)
        for t in times:
            meter.add(t)
        meter.add((times[-1] if times else 0.0) + 2 * meter.bin_s, 0)
        return meter

    def _push(self, count: int) -> None:
        bins = self._bins
        if len(bins) == bins.maxlen:
            old = bins[0]
            self._sum -= old
        bins.append(count)
        self._sum += count

    def add(self, now_s: float, count: int = 1) -> None:
        """Count `count` arrivals at `now_s` (a clock that never goes back)."""
        if self._origin_s is None:
            self._origin_s = now_s
        index = math.floor((now_s - self._origin_s) / self.bin_s + 1e-9)
        if index > self._index:
            self._push(self._current)
            # Bins without a call: no arrivals (at most a window's worth matters).
            for _ in range(min(index - self._index - 1, self._bins.maxlen or 0)):
                self._push(0)
            self._index, self._current = index, 0
        self._current += max(0, count)

    def value(self) -> tuple[float, float] | None:
        """(index of dispersion, arrival rate in req/s) over the closed bins of the window;
        None with fewer than `min_bins` bins or no arrival in them.

        The variance is taken around the mean of each block of `BLOCK_S` (2 s), not around the
        window's: the control loop follows changes of the rate that last longer than that
        (a step from 40 to 400 req/s is a new rate, not a burst), what capacity must absorb is
        the variation faster than the loop. A block with a half without arrivals is left out,
        of the variance and of the rate: a service going idle or back from idle (scale to zero)
        would otherwise read as a burst of its whole rate above a mean diluted by the silence
        (the sparse trace's speech sessions: an index of 3.2 at 0.4 req/s, a cv2 of 52, 5
        replicas for 30 req/s)."""
        n = len(self._bins)
        if n < self._min_bins or self._sum <= 0:
            return None
        bins = list(self._bins)
        block = max(2, round(BLOCK_S / self.bin_s))
        squares, dof, counted = 0.0, 0, 0
        for start in range(0, n - 1, block):
            part = bins[start : start + block]
            half = len(part) // 2
            if len(part) < 2 or sum(part[:half]) == 0 or sum(part[half:]) == 0:
                continue  # idle, or going or coming back: no rate (scale to zero), no burst
            total = sum(part)
            mean = total / len(part)
            squares += sum((c - mean) ** 2 for c in part)
            dof += len(part) - 1
            counted += len(part)
        if counted < self._min_bins or dof == 0:
            return None
        mean = self._sum / counted
        return (squares / dof) / mean, mean / self.bin_s


def _renewal_correlation(lag_s: float, phase_s: float, stages: int | None) -> float:
    """The correlation of a rate at two times `lag_s` apart, when the rate holds independent
    levels for phases of mean `phase_s`, each `stages` exponential stages long (an Erlang
    sojourn; None: a fixed length), at a random offset: the chance that no phase begins
    between them, (1 / phase_s) times the integral of the sojourn's survival beyond `lag_s`."""
    if stages is None:
        return max(0.0, 1.0 - lag_s / phase_s)
    mean = stages * lag_s / phase_s
    term = math.exp(-mean)
    cumulative, total = 0.0, 0.0
    for i in range(stages):
        if i:
            term *= mean / i
        cumulative += term
        total += cumulative
    return total / stages


def variance_share(
    phase_s: float,
    stages: int | None = None,
    bin_s: float = BIN_S,
    block_s: float = BLOCK_S,
    nodes: int = 40,
) -> float:
    """The expected share of a rate's variance that `DispersionMeter.value` reads, when the
    rate holds levels for phases of mean `phase_s` (`_renewal_correlation`).

    The meter reads the variance of counts per bin around their block's mean: what a phase
    spends within one bin is averaged away, and the part of the variance the block's mean
    carries (levels held through much of the block) is removed. For bins i, j of a block of n
    the rate's covariance is the variance times the bins' mean correlation r(|i - j|), so the
    block's squares around its mean expect n r(0) - (1/n) sum_ij r(|i - j|) of it, over the
    n - 1 degrees of freedom the meter divides by. Phases of 0.5 s, fixed: 0.74 (the meter's
    cv2 is 0.74 of the rate's); 2 s: 0.33; 0.1 s: 0.65. The router measures no phase length,
    so the planner takes the meter's reading as it is (the variation its blocks remove is
    slow enough for the control loop); a benchmark whose generator's phases are known divides
    by this to give the batching model the rate's variance (bench/serverless/worker_model.py)."""
    n = max(2, round(block_s / bin_s))
    # The mean correlation of two bins m apart: the lag between points of each, m bins plus a
    # difference s in (-bin, bin), triangular.
    steps = [(-1.0 + (2 * i + 1) / nodes) * bin_s for i in range(nodes)]
    weights = [(1.0 - abs(d) / bin_s) for d in steps]
    scale = sum(weights)
    mean_corr = [
        sum(
            w * _renewal_correlation(abs(m * bin_s + d), phase_s, stages)
            for w, d in zip(weights, steps, strict=True)
        )
        / scale
        for m in range(n)
    ]
    pairs = n * mean_corr[0] + 2 * sum((n - m) * mean_corr[m] for m in range(1, n))
    return (n * mean_corr[0] - pairs / n) / (n - 1)
