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
