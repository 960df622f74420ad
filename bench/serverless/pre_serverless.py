"""The product as it planned before issue 17: a baseline for the sparse-trace bench.

Issue 17's cost goal is judged against "today's fixed-margin planning", the operator as it was
before its serverless work landed (f331734 and after; the last commit before it is
f331734^). That operator planned every service for its demand estimate with the fixed
utilization margin and nothing else:

* no replica floor (the API had no `minReplicas`): a service whose estimate is zero, because
  it has not had a request yet or because its first measurement counted none, is planned
  zero workers; one that has had requests keeps the replicas its estimate asks for, and the
  estimate falls with the 20 s half-life without ever reaching zero, so its last replica stays;
* no idle period (no `scaleToZeroIdleSeconds`): nothing releases a replica for silence;
* no activator: a request that reaches a router with no ready replica behind it is answered
  503 (shed) at once; the operator hears of the demand at the routers' next report (every
  `demand_interval_s`) and plans for it then;
* its demand estimator (`PreServerlessEstimator`): the same asymmetric EWMA as today's, but a
  surge over capacity is more than `SURGE_SIGMAS` standard deviations of counting noise (today
  it also needs `SURGE_SIGMAS` arrivals more, `demand.surge_margin_qps`), and no overload rule
  (today every service follows falls fast once some service has been short for 10 s). The
  loop's timings (`control.timing`) have not changed since.

None of this is a setting today's API offers (`minReplicas: 0` brings the idle period, the
standby routing table and the activator with it; the default `minReplicas: 1` keeps a replica
of a service that never had a request), so the baseline is built here, on today's loop: a
`ControlLoop` whose problems carry no replica floor, a `LoopControl` whose routers shed
instead of holding, the old estimator. Services are applied with the API's defaults (no
`minReplicas`, no `scaleToZeroIdleSeconds`) and, as every policy of the bench,
`demand.burst.policy: Off` (an option the old API had: no spare replicas for cost-sensitive
services). What else has changed in the loop since (make-before-break swaps, relabelling,
pipelines, MIG) is shared by every policy of the bench.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.control.demand import (
    BURST_BASELINE_S,
    BURST_WINDOW_S,
    SURGE_SIGMAS,
    DemandEstimator,
    DemandTracker,
    counting_noise_qps,
)
from accordion.operator.control.loop import ControlLoop, DemandView, World
from accordion.operator.planning import ProblemBuild
from accordion.sim.driver import LoopControl, family_service
from accordion.sim.engine import Control
from accordion.sim.policies import Accordion
from accordion.sim.workload import Family
from accordion.solver import PlannerSettings

if TYPE_CHECKING:
    from accordion.sim.engine import Simulator


class PreServerlessEstimator(DemandEstimator):
    """The demand estimator as it was before issue 17 (f331734^, `control/demand.py`),
    verbatim: the baseline's, so kept here and not in the product."""

    def observe(
        self,
        t_s: float,
        rate_qps: float,
        *,
        capacity_qps: float | None = None,
        short: bool = False,
    ) -> float:
        if not math.isfinite(rate_qps) or rate_qps < 0:
            raise ValueError(f"rate must be a finite non-negative number, got {rate_qps}")
        if self.estimate_qps is None or self.last_t_s is None:
            self.estimate_qps, self.last_t_s = rate_qps, t_s
            return rate_qps
        dt = max(0.0, t_s - self.last_t_s)
        before = self.estimate_qps
        while self.recent and self.recent[0][0] < t_s - BURST_BASELINE_S:
            self.recent.popleft()
        baseline = min([before, *(e for _, e in self.recent)])
        self.recent.append((t_s, before))
        half_life = self.rise_half_life_s if rate_qps > before or short else self.fall_half_life_s
        keep: float = 0.5 ** (dt / half_life)
        estimate = keep * before + (1.0 - keep) * rate_qps
        if dt > 0:
            excess = rate_qps - baseline - SURGE_SIGMAS * counting_noise_qps(baseline, dt)
            if excess > 0:
                self.bursts.append((t_s, excess / max(baseline, 1.0)))
            if capacity_qps is not None and rate_qps > capacity_qps + SURGE_SIGMAS * (
                counting_noise_qps(capacity_qps, dt)
            ):
                estimate = max(estimate, rate_qps)
        while self.bursts and self.bursts[0][0] < t_s - BURST_WINDOW_S:
            self.bursts.popleft()
        self.estimate_qps, self.last_t_s = estimate, t_s
        return estimate


class PreServerlessTracker(DemandTracker):
    """`DemandTracker` with the old estimator and without the overload rule."""

    def observe(self, service: str, t_s: float, rate_qps: float) -> float:
        est = self.estimators.get(service)
        if est is None:
            est = self.estimators[service] = PreServerlessEstimator(
                self.rise_half_life_s, self.fall_half_life_s
            )
        return est.observe(
            t_s,
            rate_qps,
            capacity_qps=self.capacity_qps.get(service),
            short=service in self.short,
        )


class PreServerlessLoop(ControlLoop):
    """Today's loop planning as before issue 17: no service gets a replica floor."""

    def _build(
        self, world: World, estimates: Mapping[str, float], demand: DemandView
    ) -> ProblemBuild:
        build = super()._build(world, estimates, demand)
        if any(s.min_replicas for s in build.problem.services):
            build.problem = build.problem.model_copy(
                update={
                    "services": [
                        s.model_copy(update={"min_replicas": 0}) for s in build.problem.services
                    ]
                }
            )
        return build


class PreServerlessControl(LoopControl):
    """The simulator's driver of the operator with the pre-issue-17 loop, estimator and
    routers (no activator: a request with no ready replica is shed)."""

    holds_requests = False

    def __init__(self, sim: Simulator, **kwargs: Any) -> None:
        super().__init__(sim, **kwargs)
        self.loop = PreServerlessLoop(self.loop.settings, clock=lambda: sim.now_s)
        self.tracker = PreServerlessTracker(
            self.timings.rise_half_life_s, self.timings.fall_half_life_s
        )


def plain_service(fam: Family, service_time: str, initial_qps: float) -> InferenceService:
    """The family as a user applied it before issue 17: the API's defaults, no spare
    replicas (`demand.burst.policy: Off`, as for every policy of the bench)."""
    obj = family_service(fam, service_time, initial_qps).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    obj["spec"].setdefault("demand", {})["burst"] = {"policy": "Off"}
    svc = parse_resource(obj, f"family {fam.name}")
    assert isinstance(svc, InferenceService)
    return svc


class PreServerless(Accordion):
    """The pre-issue-17 product at utilization margin `utilization` (None: the default)."""

    def __init__(self, *, utilization: float | None, name: str) -> None:
        planner = None if utilization is None else PlannerSettings(utilization=utilization)
        super().__init__(planner=planner, name=name)

    def control(self, sim: Simulator) -> Control:
        return PreServerlessControl(
            sim, timings=self.timings, planner=self.planner, services=plain_service
        )
