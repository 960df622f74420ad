"""A service's arrival burstiness for the planner, from its routers' measurements.

Why: the planner sizes replicas with a model of the SLO batcher that needs the burstiness of a
service's arrivals (`accordion.solver.queueing`); each router measures the index of dispersion
of its own arrival counts (`accordion.workers.dispersion`). Two rules live here, shared by the
operator (`reports.RouterDemand`) and the simulator's driver, so both plan from the same input:

* **Combining routers.** A service's routers see parts of one stream whose rate varies as a
  whole: counts add up, and so do their variances beyond Poisson, so the service's index is
  1 + the sum over routers of (D_r - 1), at the sum of their rates.
* **Publishing.** The planner re-plans whenever its input changes, and a measured index moves a
  little every second. A new value is published only when the rate variability it implies
  (`Burstiness.rate_cv2`) moved by more than `MIN_CHANGE` of itself; an index within the
  counting noise of 1 (`POISSON_SIGMAS` standard errors of a Poisson stream's index over
  `BINS` bins) is published as 1, Poisson.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from accordion.solver import Burstiness, Problem

BIN_S = 0.1
"""The routers' counting bin (`accordion.workers.dispersion.BIN_S`)."""
BINS = 600
"""Bins per measurement (60 s of 0.1 s)."""
POISSON_SIGMAS = 3.0
"""An index closer to 1 than this many standard errors (sqrt(2 / BINS)) counts as Poisson."""
MIN_CHANGE = 0.25
"""A published burstiness is replaced when its rate variability moved by more than this."""


def combine(routers: Iterable[tuple[float, float]]) -> Burstiness | None:
    """The service's burstiness from its routers' (index of dispersion, rate); None when no
    router measured arrivals."""
    excess, rate = 0.0, 0.0
    for dispersion, rate_qps in routers:
        if math.isfinite(dispersion) and math.isfinite(rate_qps) and rate_qps > 0:
            excess += max(0.0, dispersion - 1.0)
            rate += rate_qps
    if rate <= 0:
        return None
    if excess < POISSON_SIGMAS * math.sqrt(2.0 / BINS):
        excess = 0.0
    return Burstiness(dispersion=round(1.0 + excess, 4), window_s=BIN_S, rate_qps=round(rate, 4))


@dataclass
class BurstinessBook:
    """The burstiness published per service (see the module docstring)."""

    published: dict[str, Burstiness] = field(default_factory=dict)

    def observe(self, service: str, measured: Burstiness | None) -> bool:
        """Take a new measurement; True when the published value changed."""
        if measured is None:
            return False
        old = self.published.get(service)
        if old is not None:
            before, now = old.rate_cv2, measured.rate_cv2
            if abs(now - before) <= MIN_CHANGE * max(before, now):
                return False
        self.published[service] = measured
        return True

    def forget(self, service: str) -> None:
        self.published.pop(service, None)


def with_burstiness(problem: Problem, burstiness: Mapping[str, Burstiness]) -> Problem:
    """`problem` with each service's published burstiness in its `ServiceSpec`."""
    if not burstiness:
        return problem
    services = [
        s.model_copy(update={"burstiness": burstiness[s.name]})
        if s.name in burstiness and s.burstiness != burstiness[s.name]
        else s
        for s in problem.services
    ]
    return problem.model_copy(update={"services": services})
