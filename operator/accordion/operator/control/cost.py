"""What each service costs: device-seconds, their price, and the price per 1,000 requests.

The planner minimizes device cost (after served demand and accuracy); this meter says what the
result costs while it runs, per InferenceService, so that a user can compare a plan, a
`minReplicas` floor or scale to zero in money rather than replicas. Every pass of the control
loop (`ControlLoop.decide`) adds, for the time since the last pass:

* device-seconds: the replicas every worker group of the service holds (its spec, so starting
  replicas and spare replicas count: they hold a device too), times the time;
* cost: those device-seconds in hours times the pool's `costPerDevice` (documented as a price
  per device-hour, e.g. the cloud's);
* requests: the service's measured arrival rate (the demand estimate before headroom) times the
  time: the routers' arrivals as the loop sees them.

`cost_per_1k_requests` is cost / requests x 1000 over the same time. The totals are seeded from
the service's status (`deviceSeconds`, `cost`, `costPer1kRequests`) when the meter first sees
a service, so an operator restart or a new leader goes on counting. They reach the status at
most every `PUBLISH_INTERVAL_S` (a status write per service per pass would cost the API server
more than the figure is worth), and the operator's metrics at every pass
(`accordion_service_device_seconds_total`, `accordion_service_cost_total`,
`accordion_service_cost_per_1k_requests`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from accordion.operator.control.world import DemandView, World

PUBLISH_INTERVAL_S = 60.0
"""How often a service's status gets its cost figures."""
MAX_STEP_S = 600.0
"""A longer gap between passes (a stalled operator) counts this long: what ran meanwhile is
not known."""


@dataclass
class ServiceCost:
    """Running totals of one service."""

    device_seconds: float = 0.0
    cost: float = 0.0
    requests: float = 0.0
    device_seconds_by_pool: dict[str, float] = field(default_factory=dict)

    @property
    def cost_per_1k_requests(self) -> float | None:
        """Cost per 1,000 requests; None before the first request."""
        return self.cost / self.requests * 1000.0 if self.requests > 0 else None


@dataclass(frozen=True)
class CostSnapshot:
    """What the status shows (rounded), as of the last publication."""

    device_seconds: float
    cost: float
    cost_per_1k_requests: float | None


@dataclass
class CostMeter:
    """Per-service totals, added up pass by pass (see the module docstring)."""

    totals: dict[str, ServiceCost] = field(default_factory=dict)
    published: dict[str, CostSnapshot] = field(default_factory=dict)
    _published_at_s: dict[str, float] = field(default_factory=dict)
    _last_s: float | None = None

    def observe(self, world: World, demand: DemandView, now_s: float) -> None:
        """Add what ran since the last call, and publish what is due."""
        dt = 0.0 if self._last_s is None else min(MAX_STEP_S, max(0.0, now_s - self._last_s))
        self._last_s = now_s
        for key in world.services:
            if key not in self.totals:
                self.totals[key] = _seed(world, key)
        for wkey, worker in world.workers.items():
            total = self.totals.get(wkey.service)
            pool = world.pools.get(wkey.pool)
            if total is None or pool is None:
                continue
            held = worker.spec.replicas * dt
            total.device_seconds += held
            total.cost += held / 3600.0 * pool.spec.cost_per_device
            by_pool = total.device_seconds_by_pool
            by_pool[wkey.pool] = by_pool.get(wkey.pool, 0.0) + held
        for key, total in self.totals.items():
            total.requests += demand.qps.get(key, 0.0) * dt
        for key in [k for k in self.totals if k not in world.services]:
            del self.totals[key]
            self.published.pop(key, None)
            self._published_at_s.pop(key, None)
        for key, total in self.totals.items():
            last = self._published_at_s.get(key)
            if last is None or now_s - last >= PUBLISH_INTERVAL_S:
                self._published_at_s[key] = now_s
                per_1k = total.cost_per_1k_requests
                self.published[key] = CostSnapshot(
                    device_seconds=round(total.device_seconds, 1),
                    cost=round(total.cost, 6),
                    cost_per_1k_requests=None if per_1k is None else round(per_1k, 6),
                )


def _seed(world: World, key: str) -> ServiceCost:
    """Totals from the service's status (what an earlier operator counted), else zero."""
    status = world.status.get(key)
    if status is None or status.device_seconds is None:
        return ServiceCost()
    cost = status.cost or 0.0
    per_1k = status.cost_per_1k_requests
    requests = cost / per_1k * 1000.0 if per_1k else 0.0
    return ServiceCost(device_seconds=status.device_seconds, cost=cost, requests=requests)
