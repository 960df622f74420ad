"""Scale to zero: which services with `minReplicas: 0` are idle, and what that changes.

KServe's convention: `minReplicas: 0` allows a service to run no replica at all. Here it does
so after `scaleToZeroIdleSeconds` without a request (Knative decides the same from its stable
window and retention period). Until then, and again from the first request after, it is
planned with one replica at least (`InferenceServiceSpec.replica_floor`), whatever its demand
estimate: a request at zero replicas must start one (its router holds it meanwhile, the
activator in `accordion.workers.activator`).

The last arrival of each service comes from the demand tracker every driver feeds
(`DemandView.last_arrival_s`, on the loop's clock). A service counts as active from the first
time the loop sees it (Knative's initial scale of 1). A driver that cannot tell arrivals
(no entry for the service) keeps it active while its estimate is above zero: an unknown is
never a reason to release the last replica. A `Static` service with a `demand.qps` above zero is
never idle: its demand is declared, not measured.

An idle service is planned for zero demand with no floor (`idle_problem`): the planner then
gives it no replica, the loop removes its workers (make before break, as for any shrink), and
its status says `scaledToZero`. Its router keeps a *standby* table meanwhile
(`standby_routing`): the backends it last had, at no capacity. A router needs a table to start
(a pod restarted while the service is at zero would otherwise fail, and no request could reach
the activator to start a replica); with it, held requests go to the first of those backends
that answers its health check, or on with the table of the plan that starts a replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from accordion.operator.api import DemandSource, InferenceService
from accordion.operator.control.desired import Routing
from accordion.operator.control.world import AppliedRouting
from accordion.solver import Problem


@dataclass
class IdleTracker:
    """When the loop first saw each scale-to-zero service; which of them are idle now."""

    first_seen_s: dict[str, float] = field(default_factory=dict)
    idle_now: frozenset[str] = frozenset()
    """The idle services as of the last `update`."""

    def update(
        self,
        services: Mapping[str, InferenceService],
        qps: Mapping[str, float],
        last_arrival_s: Mapping[str, float],
        now_s: float,
    ) -> frozenset[str]:
        """The services idle at `now_s` (also kept as `idle_now`)."""
        idle: set[str] = set()
        for key, svc in services.items():
            if svc.spec.min_replicas > 0:
                self.first_seen_s.pop(key, None)
                continue
            seen = self.first_seen_s.setdefault(key, now_s)
            demand = svc.spec.demand
            if demand.source is DemandSource.STATIC and (demand.qps or 0.0) > 0:
                continue  # declared demand, not measured: never idle
            last = last_arrival_s.get(key)
            if last is None and qps.get(key, 0.0) > 0:
                continue  # arrivals unknown, demand there: active
            since = max(seen, last) if last is not None else seen
            if now_s - since >= svc.spec.scale_to_zero_idle_seconds:
                idle.add(key)
        for key in [k for k in self.first_seen_s if k not in services]:
            del self.first_seen_s[key]
        self.idle_now = frozenset(idle)
        return self.idle_now


def idle_demand(measured: Mapping[str, float], idle: frozenset[str]) -> dict[str, float]:
    """Measured demand with every idle service at zero (its spec's qps fallback included)."""
    out = dict(measured)
    for key in idle:
        out[key] = 0.0
    return out


def idle_problem(problem: Problem, idle: frozenset[str]) -> Problem:
    """`problem` with no replica floor for the idle services."""
    if not idle or not any(s.name in idle and s.min_replicas > 0 for s in problem.services):
        return problem
    return problem.model_copy(
        update={
            "services": [
                s.model_copy(update={"min_replicas": 0}) if s.name in idle else s
                for s in problem.services
            ]
        }
    )


def standby_routing(
    service: InferenceService, routing: Routing, applied: AppliedRouting | None
) -> Routing:
    """`routing`, or for a `minReplicas: 0` service left without routes, the routes of the
    routing in place at no capacity (see the module docstring)."""
    if routing.routes or service.spec.min_replicas > 0 or applied is None:
        return routing
    routes = [r.model_copy(update={"capacity_qps": 0.0}) for r in applied.routing.routes]
    if not any(r.weight > 0 for r in routes):
        return routing
    return routing.model_copy(update={"routes": routes})
