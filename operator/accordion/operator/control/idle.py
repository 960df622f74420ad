"""Scale to zero: which services with `minReplicas: 0` are idle, and what that changes.

KServe's convention: `minReplicas: 0` allows a service to run no replica at all. Here it does
so after a silence (no request) of its *idle period*, at most `scaleToZeroIdleSeconds` (Knative
decides the same from its stable window and retention period, 90 s by default, whatever the
traffic). Within that bound the idle period follows what the routers measure
(`idle_period_s`):

* a silence that the service's own traffic makes often is no reason to release: it is at least
  `SILENCE_GAPS` mean gaps between requests at the rate seen when the last request came (a
  Poisson stream at that rate is silent that long once in a thousand silences);
* releasing costs a cold start when traffic returns: the device time of the restart and the
  requests that arrive meanwhile. The rent-or-buy rule keeps a replica idle about as long as
  a restart costs (in hindsight never more than twice the device-seconds of the better
  choice); here at least `COLD_STARTS` of the cold starts the routers measured
  (`DemandView.cold_start_s`). A service that has not had one yet (it began warm) takes the
  median of the other services' (pods of one cluster start alike; its own first cold start
  corrects it), `DEFAULT_COLD_START_S` while no service has had one: on the sparse trace a
  diurnal service that began warm kept its replica 30 s after its day instead of 9.

With traffic that stops for minutes (sessions, a diurnal trough) the replica goes after seconds,
not after 90 s of paying for an idle device; with traffic that pauses briefly it stays.

*Pre-warm* (`prewarm_window_s`): traffic that stops and returns on a schedule (sessions, a
periodic job) would pay a cold start at every return, its first requests lost while the replica
loads. Each silence that reached the idle period (an *off period*: the replica went, or would
have) is measured from the last arrival before it to the first after (`OFF_PERIODS_KEPT` kept,
the newest). When a service's kept off periods agree within one cold start, the next is
expected to be as long: its replica is started `PREWARM_LEAD` cold starts before the shortest
of them would end, and kept until the longest would have ended plus the idle period; no
request by then and it goes again (that longer silence, once it ends, widens the spread and
stops pre-warming until regular ones replace it). The price is the idle period's convention:
a right guess keeps the replica about `PREWARM_LEAD` cold starts (plus the spread) longer
than needed, under the `COLD_STARTS` a cold start is priced at; a wrong one about the window.
One off period suffices (the published hybrid-histogram policy for serverless functions,
Shahrad et al., ATC 2020, pre-warms at the head of the measured idle times the same way); a
service whose silences vary more than a cold start is never pre-warmed. Each pre-warm is
counted, and whether the traffic came back within it (`IdleTracker.prewarms`, `prewarms_met`):
the service's status (`prewarmed`, `prewarms`, `prewarmsMet`) and the operator's metrics
(`accordion_service_prewarmed`, `accordion_service_prewarms_total`,
`accordion_service_prewarms_met_total`) show them beside its cold starts and device-seconds.

Until then, and again from the first request after, it is planned with one replica at least
(`InferenceServiceSpec.replica_floor`), whatever its demand estimate: a request at zero
replicas must start one (its router holds it meanwhile, the activator in
`accordion.workers.activator`).

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

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from accordion.operator.api import DemandSource, InferenceService
from accordion.operator.control.desired import Routing
from accordion.operator.control.world import AppliedRouting
from accordion.solver import Problem

SILENCE_GAPS = math.log(1000.0)
"""A silence shorter than this many mean gaps at the last rate seen is part of the traffic."""
COLD_STARTS = 3.0
"""The idle period is at least this many measured cold starts: one for the restart's device
time, two for the requests a restart fails (a chosen price, not a derived one)."""
DEFAULT_COLD_START_S = 10.0
"""The cold start assumed before the routers measured one (a pod's start and a model's load)."""
PREWARM_LEAD = 2.0
"""A pre-warmed replica is started this many measured cold starts before the expected return
(one for the cold start itself, one for the measurement's and the pass's delays)."""
OFF_PERIODS_KEPT = 4
"""The newest off periods kept per service (pre-warm)."""


def prewarm_window_s(
    off_periods_s: Sequence[float], cold_start_s: float, idle_s: float
) -> tuple[float, float] | None:
    """When, after the last arrival, a silent service's replica is kept or started ahead of
    its expected return (the module docstring), or None (no off period measured, or they
    disagree by more than a cold start); `idle_s`: its idle period."""
    if not off_periods_s:
        return None
    lo, hi = min(off_periods_s), max(off_periods_s)
    if hi - lo > cold_start_s:
        return None
    return lo - PREWARM_LEAD * cold_start_s, hi + idle_s


def idle_period_s(limit_s: float, cold_start_s: float | None, rate_qps: float | None) -> float:
    """How long a `minReplicas: 0` service must be silent before its last replica goes (the
    module docstring), at most `limit_s` (`scaleToZeroIdleSeconds`); `rate_qps`: its demand
    when its last request came (None or 0: unknown, the limit)."""
    if rate_qps is None or rate_qps <= 0:
        return limit_s
    cold = cold_start_s if cold_start_s is not None else DEFAULT_COLD_START_S
    return min(limit_s, max(COLD_STARTS * cold, SILENCE_GAPS / rate_qps))


@dataclass
class IdleTracker:
    """When the loop first saw each scale-to-zero service; which of them are idle now."""

    first_seen_s: dict[str, float] = field(default_factory=dict)
    idle_now: frozenset[str] = frozenset()
    """The idle services as of the last `update`."""
    rate_at_last_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per service, (its last arrival, its demand estimate when the loop saw it)."""
    off_periods_s: dict[str, deque[float]] = field(default_factory=dict)
    """Per service, its newest off periods: silences that reached its idle period (pre-warm)."""
    prewarmed: frozenset[str] = frozenset()
    """The services kept or started ahead of their expected return as of the last `update`."""
    prewarms: dict[str, int] = field(default_factory=dict)
    """Per service, its pre-warms so far: each time its replica was kept or started ahead of an
    expected return (status `prewarms`, `accordion_service_prewarms_total`)."""
    prewarms_met: dict[str, int] = field(default_factory=dict)
    """... of them, those its traffic came back within (the rest were released unused)."""

    def update(
        self,
        services: Mapping[str, InferenceService],
        qps: Mapping[str, float],
        last_arrival_s: Mapping[str, float],
        now_s: float,
        cold_start_s: Mapping[str, float] | None = None,
    ) -> frozenset[str]:
        """The services idle at `now_s` (also kept as `idle_now`); `cold_start_s`: the cold
        starts the routers measured (`idle_period_s`; the module docstring for a service
        without one)."""
        cold_starts = dict(cold_start_s or {})
        usual_s = statistics.median(cold_starts.values()) if cold_starts else None
        idle: set[str] = set()
        prewarmed: set[str] = set()
        for key, svc in services.items():
            if svc.spec.min_replicas > 0:
                self.first_seen_s.pop(key, None)
                self.rate_at_last_s.pop(key, None)
                self.off_periods_s.pop(key, None)
                continue
            seen = self.first_seen_s.setdefault(key, now_s)
            demand = svc.spec.demand
            if demand.source is DemandSource.STATIC and (demand.qps or 0.0) > 0:
                continue  # declared demand, not measured: never idle
            last = last_arrival_s.get(key)
            if last is None and qps.get(key, 0.0) > 0:
                continue  # arrivals unknown, demand there: active
            since = max(seen, last) if last is not None else seen
            limit = svc.spec.scale_to_zero_idle_seconds
            cold = cold_starts.get(key, usual_s)
            rate: float | None = None
            if last is not None:
                known = self.rate_at_last_s.get(key)
                if known is None or known[0] != last:
                    if key in self.prewarmed:  # back while its pre-warmed replica was up
                        self.prewarms_met[key] = self.prewarms_met.get(key, 0) + 1
                    if known is not None and last - known[0] >= idle_period_s(
                        limit, cold, known[1]
                    ):
                        offs = self.off_periods_s.setdefault(key, deque(maxlen=OFF_PERIODS_KEPT))
                        offs.append(last - known[0])
                    known = self.rate_at_last_s[key] = (last, qps.get(key, 0.0))
                rate = known[1]
            period = idle_period_s(limit, cold, rate)
            if now_s - since < period:
                continue
            window = prewarm_window_s(
                self.off_periods_s.get(key, ()),
                cold if cold is not None else DEFAULT_COLD_START_S,
                period,
            )
            if last is not None and window is not None and window[0] <= now_s - last < window[1]:
                prewarmed.add(key)
                if key not in self.prewarmed:
                    self.prewarms[key] = self.prewarms.get(key, 0) + 1
                continue
            idle.add(key)
        for key in [k for k in self.first_seen_s if k not in services]:
            del self.first_seen_s[key]
            self.rate_at_last_s.pop(key, None)
            self.off_periods_s.pop(key, None)
        for key in [k for k in self.prewarms if k not in services]:
            del self.prewarms[key]
            self.prewarms_met.pop(key, None)
        self.idle_now = frozenset(idle)
        self.prewarmed = frozenset(prewarmed)
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
