"""Demand estimation: smooth measured request rates into the rate the planner plans for.

One estimator for every driver (operator, local mode, simulator), so that the same arrivals
lead to the same plans everywhere. It is an exponentially weighted moving average with separate
half-lives for rising and falling demand: a rise is followed within a few seconds (an SLO is
lost in seconds), a fall only slowly (releasing devices too early costs a re-plan and a model
load when demand comes back). Headroom is not applied here but where the problem is built
(`accordion.operator.planning.planned_demand_qps`), from each service's spec.

Two rules use what the loop planned (`DemandTracker.plan_feedback`, after every pass):

* a surge: a measured rate above the service's planned capacity by more than counting noise
  (`SURGE_SIGMAS` standard deviations of a Poisson count at that capacity over the interval)
  is taken at once, not smoothed in: capacity that is already short must not wait for an
  average to catch up (the loop then plans for it at once, `ControlLoop.pass_due`);
* a service that is short (the plan cannot serve its estimate) follows a falling rate with the
  rise half-life too: in overload a stale estimate keeps devices on a service whose demand has
  gone while others starve;
* once the plan has been short for some service for `OVERLOAD_S` (overload, not a spike),
  every service follows a falling rate with the rise half-life: a service that is not short
  itself holds devices the short ones need, and its stale estimate keeps them there. A short
  spike does not qualify: releasing every service's devices for it costs model loads when
  demand comes back.

Each estimator also learns how bursty its service is (`learned_burst`): the largest excess of a
measured rate over the lowest estimate of the `BURST_BASELINE_S` before it (less counting
noise), as a fraction of that estimate, over the last `BURST_WINDOW_S`.
`spec.demand.burst.policy: Auto` sizes the service's spare replicas from it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from accordion.operator.control.timing import DEFAULT_TIMINGS

SURGE_SIGMAS = 3.0
"""How many standard deviations of counting noise a rate must exceed capacity by to be a surge."""
BURST_WINDOW_S = 600.0
"""How far back `learned_burst` looks."""
BURST_BASELINE_S = 10.0
"""A burst's excess is measured against the lowest estimate of this long before it."""
OVERLOAD_S = 10.0
"""How long the plan must have been short before every service's falls are followed fast."""


def counting_noise_qps(rate_qps: float, interval_s: float) -> float:
    """Standard deviation of a rate measured by counting Poisson arrivals over `interval_s`."""
    return math.sqrt(max(rate_qps, 1.0) / max(interval_s, 1e-3))


def surge_margin_qps(rate_qps: float, interval_s: float) -> float:
    """How far a rate counted over `interval_s` must exceed `rate_qps` to be more than noise:
    `SURGE_SIGMAS` standard deviations, plus `SURGE_SIGMAS` arrivals for the Poisson tail at
    small counts (the Gaussian bound alone is crossed by 1-3 arrivals in a window of a
    millisecond: a wake that reports right after a reading would set the estimate to
    thousands of req/s)."""
    window = max(interval_s, 1e-9)
    noise = math.sqrt(max(rate_qps, 1.0) / window)
    return SURGE_SIGMAS * noise + SURGE_SIGMAS / window


@dataclass
class DemandEstimator:
    """Asymmetric EWMA of one service's request rate, on an injected clock (seconds)."""

    rise_half_life_s: float = DEFAULT_TIMINGS.rise_half_life_s
    fall_half_life_s: float = DEFAULT_TIMINGS.fall_half_life_s
    estimate_qps: float | None = None
    last_t_s: float | None = None
    bursts: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, excess over the estimate as a fraction) of measurements above it."""
    recent: deque[tuple[float, float]] = field(default_factory=deque)
    """(time, estimate) of the last `BURST_BASELINE_S`."""
    last_arrival_s: float | None = None
    """When a measured rate last was above zero (scale to zero waits for idleness)."""

    def __post_init__(self) -> None:
        if self.rise_half_life_s <= 0 or self.fall_half_life_s <= 0:
            raise ValueError("half-lives must be positive")

    def observe(
        self,
        t_s: float,
        rate_qps: float,
        *,
        capacity_qps: float | None = None,
        short: bool = False,
    ) -> float:
        """Fold in a rate measured at time `t_s` (over the interval since the last one).

        `capacity_qps`: the service's planned capacity (a surge above it is taken at once);
        `short`: the plan cannot serve the estimate (falls are followed fast)."""
        if not math.isfinite(rate_qps) or rate_qps < 0:
            raise ValueError(f"rate must be a finite non-negative number, got {rate_qps}")
        if rate_qps > 0:
            self.last_arrival_s = t_s
        if self.estimate_qps is None or self.last_t_s is None:
            self.estimate_qps, self.last_t_s = rate_qps, t_s
            return rate_qps
        dt = max(0.0, t_s - self.last_t_s)
        before = self.estimate_qps
        # A burst is measured against where demand stood before it began (the lowest estimate
        # of the last BURST_BASELINE_S): once a surge has moved the estimate, the rest of the
        # burst would otherwise look like no burst at all.
        while self.recent and self.recent[0][0] < t_s - BURST_BASELINE_S:
            self.recent.popleft()
        baseline = min([before, *(e for _, e in self.recent)])
        self.recent.append((t_s, before))
        rising = rate_qps > before
        half_life = self.rise_half_life_s if rising or short else self.fall_half_life_s
        keep: float = 0.5 ** (dt / half_life)
        estimate = keep * before + (1.0 - keep) * rate_qps
        if dt > 0:
            excess = rate_qps - baseline - surge_margin_qps(baseline, dt)
            if excess > 0:
                self.bursts.append((t_s, excess / max(baseline, 1.0)))
            if capacity_qps is not None and rate_qps > capacity_qps + surge_margin_qps(
                capacity_qps, dt
            ):
                estimate = max(estimate, rate_qps)
        while self.bursts and self.bursts[0][0] < t_s - BURST_WINDOW_S:
            self.bursts.popleft()
        self.estimate_qps, self.last_t_s = estimate, t_s
        return estimate

    def learned_burst(self) -> float | None:
        """The largest recent excess over the estimate, as a fraction; None before any."""
        if self.last_t_s is None:
            return None
        return max((b for _, b in self.bursts), default=0.0)


@dataclass
class DemandTracker:
    """Estimators for many services, keyed by `namespace/name`."""

    rise_half_life_s: float = DEFAULT_TIMINGS.rise_half_life_s
    fall_half_life_s: float = DEFAULT_TIMINGS.fall_half_life_s
    estimators: dict[str, DemandEstimator] = field(default_factory=dict)
    capacity_qps: dict[str, float] = field(default_factory=dict)
    """Planned capacity per service (`plan_feedback`)."""
    short: set[str] = field(default_factory=set)
    """Services the plan cannot serve in full (`plan_feedback`)."""
    short_since_s: float | None = None
    """Since when (measurement time) some service has been short without a break."""

    def plan_feedback(self, capacity_qps: Mapping[str, float], short: Set[str]) -> None:
        """What the loop planned: each service's capacity, and which ones are short."""
        self.capacity_qps = dict(capacity_qps)
        self.short = set(short)

    def observe(self, service: str, t_s: float, rate_qps: float) -> float:
        """Fold in one service's measured rate; return its new estimate."""
        est = self.estimators.get(service)
        if est is None:
            est = self.estimators[service] = DemandEstimator(
                self.rise_half_life_s, self.fall_half_life_s
            )
        if not self.short:
            self.short_since_s = None
        elif self.short_since_s is None:
            self.short_since_s = t_s
        overload = self.short_since_s is not None and t_s - self.short_since_s >= OVERLOAD_S
        return est.observe(
            t_s,
            rate_qps,
            capacity_qps=self.capacity_qps.get(service),
            short=overload or service in self.short,
        )

    def estimates(self) -> dict[str, float]:
        """Current estimate of every service seen so far."""
        return {
            name: est.estimate_qps
            for name, est in self.estimators.items()
            if est.estimate_qps is not None
        }

    def last_arrivals(self) -> dict[str, float]:
        """When each service last had arrivals (services that never had any left out)."""
        return {
            name: est.last_arrival_s
            for name, est in self.estimators.items()
            if est.last_arrival_s is not None
        }

    def bursts(self) -> dict[str, float]:
        """Learned burst fraction of every service seen so far (`learned_burst`)."""
        out = {}
        for name, est in self.estimators.items():
            value = est.learned_burst()
            if value is not None:
                out[name] = value
        return out

    def forget(self, service: str) -> None:
        """Drop a deleted service's history."""
        self.estimators.pop(service, None)
        self.capacity_qps.pop(service, None)
        self.short.discard(service)
        if not self.short:
            self.short_since_s = None
