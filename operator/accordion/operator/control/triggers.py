"""When demand is worth a new plan: the hysteresis band of each service's planned estimate.

The demand estimate moves every second; a plan made for every value would re-plan all the
time and, near a variant's capacity boundary, flip between two plans (measured in local mode
before this rule: 14 flips in 82 s at a steady 30 req/s). So each service's plan is made for a
*planned estimate* P that changes only when the estimate E leaves a band around it:

    P(1 - h)  <=  E  <=  max(P(1 + h), C / (1 + headroom))

where C is the capacity the plan gives the service and h is `Timings.hysteresis`. Below the
band demand has fallen far enough to be worth releasing devices or moving up in accuracy;
above it the estimate has risen by h over what the plan was made for, or past what the plan
carries with its headroom, whichever comes later. So a plan stands while a rise eats into its
headroom, up to h over its planned estimate: with C about P(1 + headroom), as on a full
cluster, the service runs up to h short of its headroom before a pass is due (t5 on the 1.5x
Proteus trace: capacity 49 for an estimate of 46-48 for 20 s). The top at C / (1 + headroom)
alone re-planned at every small rise and, on a full cluster, swapped models more often: 1.5x
0.369% -> 0.492% (`bench/proteus/NOTES.md`). In overload, C below the demand, `P(1 + h)` is
what keeps every small rise from re-planning. Inside the band the plan stands: a flip back
needs the estimate to cross the whole band, which noise around a boundary does not. A surge
above capacity (`demand.DemandTracker`) moves E at once, so a burst leaves the band in the next
measurement.

Until its first measurement a service is planned for its spec's `demand.qps`, and that is its
planned estimate: a first measurement inside the band keeps the plan made from the spec (it
re-planned every service before: on the Proteus overload trace a first reading 6% below the
spec's swapped 60 replicas for accuracy while demand rose, and the cluster served 25% less than
it could for 8 s). A first measurement outside the band re-plans, and its swaps are not held
back as a rise (`guessed`): nothing says how long demand has been there.

`ReplanGate.due` tells a driver after each measurement whether some service left its band:
the driver then runs a pass at once (within `Timings.min_pass_interval_s`), instead of waiting
for its periodic one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class ReplanGate:
    """Planned estimates per service and the band around each (see the module docstring)."""

    hysteresis: float
    planned: dict[str, float] = field(default_factory=dict)
    """The estimate (before headroom) each service's plan in force was made for."""
    guessed: set[str] = field(default_factory=set)
    """Of those, the services planned for their spec's `demand.qps`, not yet measured."""

    def inside(self, estimate: float, planned: float, capacity: float, headroom: float) -> bool:
        """Whether `estimate` is within the band of a plan made for `planned`."""
        low = planned * (1.0 - self.hysteresis)
        high = max(planned * (1.0 + self.hysteresis), capacity / (1.0 + headroom))
        return low <= estimate <= high

    def estimates(
        self,
        measured: Mapping[str, float],
        capacity: Mapping[str, float],
        headroom: Mapping[str, float],
        *,
        replanning: bool = False,
    ) -> dict[str, float]:
        """What to plan for: per service its planned estimate while the estimate is inside the
        band, else the estimate; services without a plan yet get their estimate.

        `replanning`: a new plan is being made anyway (some service left its band, or the
        world changed): a service inside its band is then planned for the larger of its
        planned estimate and its estimate. The band keeps a plan in force, but a new plan
        made for an estimate older than the demand would give away capacity the service is
        using now."""
        out: dict[str, float] = {}
        for svc, estimate in measured.items():
            planned = self.planned.get(svc)
            if planned is not None and self.inside(
                estimate, planned, capacity.get(svc, 0.0), headroom.get(svc, 0.0)
            ):
                out[svc] = max(planned, estimate) if replanning else planned
            else:
                out[svc] = estimate
        return out

    def first_readings(self, measured: Iterable[str], due: Iterable[str]) -> set[str]:
        """Of the services `due`, those whose plan was made for their spec's qps and that have
        not been measured inside their band since; a measured service inside its band is no
        longer `guessed` (its next rise is one)."""
        out = self.guessed.intersection(due)
        self.guessed -= set(measured) - out
        return out

    def due(
        self,
        measured: Mapping[str, float],
        capacity: Mapping[str, float],
        headroom: Mapping[str, float],
    ) -> list[str]:
        """The services whose estimate left its band (sorted)."""
        return sorted(
            svc
            for svc, estimate in measured.items()
            if (planned := self.planned.get(svc)) is None
            or not self.inside(estimate, planned, capacity.get(svc, 0.0), headroom.get(svc, 0.0))
        )

    def adopt(self, estimates: Mapping[str, float], guessed: Iterable[str] = ()) -> None:
        """A plan was made for `estimates`: they are the new planned estimates. `guessed`: the
        services among them planned for their spec's `demand.qps` (nothing measured yet); a
        first measurement above that is no rise of demand (`swaps.SwapGate`), only news."""
        self.planned = dict(estimates)
        self.guessed = set(guessed)
