"""Demand estimation: smooth measured request rates into the rate the planner plans for.

One estimator for every driver (operator, local mode, simulator), so that the same arrivals
lead to the same plans everywhere. It is an exponentially weighted moving average with separate
half-lives for rising and falling demand: a rise is followed within a few seconds (an SLO is
lost in seconds), a fall only slowly (releasing devices too early costs a re-plan and a model
load when demand comes back). Headroom is not applied here but where the problem is built
(`accordion.operator.planning.planned_demand_qps`), from each service's spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class DemandEstimator:
    """Asymmetric EWMA of one service's request rate, on an injected clock (seconds)."""

    rise_half_life_s: float = 2.0
    fall_half_life_s: float = 20.0
    estimate_qps: float | None = None
    last_t_s: float | None = None

    def __post_init__(self) -> None:
        if self.rise_half_life_s <= 0 or self.fall_half_life_s <= 0:
            raise ValueError("half-lives must be positive")

    def observe(self, t_s: float, rate_qps: float) -> float:
        """Fold in a rate measured at time `t_s` (over the interval since the last one)."""
        if rate_qps < 0 or math.isnan(rate_qps):
            raise ValueError(f"rate must be a non-negative number, got {rate_qps}")
        if self.estimate_qps is None or self.last_t_s is None:
            self.estimate_qps, self.last_t_s = rate_qps, t_s
            return rate_qps
        dt = max(0.0, t_s - self.last_t_s)
        half_life = self.rise_half_life_s if rate_qps > self.estimate_qps else self.fall_half_life_s
        keep = 0.5 ** (dt / half_life)
        self.estimate_qps = keep * self.estimate_qps + (1.0 - keep) * rate_qps
        self.last_t_s = t_s
        return self.estimate_qps


@dataclass
class DemandTracker:
    """Estimators for many services, keyed by `namespace/name`."""

    rise_half_life_s: float = 2.0
    fall_half_life_s: float = 20.0
    estimators: dict[str, DemandEstimator] = field(default_factory=dict)

    def observe(self, service: str, t_s: float, rate_qps: float) -> float:
        """Fold in one service's measured rate; return its new estimate."""
        est = self.estimators.get(service)
        if est is None:
            est = self.estimators[service] = DemandEstimator(
                self.rise_half_life_s, self.fall_half_life_s
            )
        return est.observe(t_s, rate_qps)

    def estimates(self) -> dict[str, float]:
        """Current estimate of every service seen so far."""
        return {
            name: est.estimate_qps
            for name, est in self.estimators.items()
            if est.estimate_qps is not None
        }

    def forget(self, service: str) -> None:
        """Drop a deleted service's history."""
        self.estimators.pop(service, None)
