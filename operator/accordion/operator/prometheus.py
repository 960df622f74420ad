"""Demand from Prometheus: the rate of each service's router requests, smoothed.

Every `demand_interval_s` the operator asks Prometheus (through `prometheus-api-client`) for
the request rate of each service whose demand source is Prometheus, folds the answers into the
shared estimator (`accordion.operator.control.demand.DemandTracker`, an asymmetric EWMA), and
publishes the estimates the control loop plans for. A service whose query fails keeps its last
estimate (or its spec's `demand.qps`) and is reported as `DemandUnavailable`. Small changes are
not published (`min_change`): re-planning for a 1% drift would only churn status.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from accordion.operator.api import DemandSource, InferenceService
from accordion.operator.control.demand import DemandTracker
from accordion.operator.control.loop import DemandView

log = logging.getLogger(__name__)


def render_query(template: str, service: InferenceService) -> str:
    if service.spec.demand.query:
        return service.spec.demand.query
    return template.format(
        namespace=service.metadata.namespace or "default", name=service.metadata.name
    )


def parse_rate(result: Any) -> float:
    """The value of an instant-vector answer (sum of samples; empty means no requests)."""
    if not isinstance(result, list):
        raise ValueError(f"unexpected Prometheus result: {result!r}")
    total = 0.0
    for sample in result:
        value = float(sample["value"][1])
        if math.isnan(value) or value < 0:
            raise ValueError(f"bad rate {value}")
        total += value
    return total


@dataclass
class PrometheusDemand:
    """Polls Prometheus and keeps the smoothed demand of every Prometheus-sourced service."""

    url: str
    query_template: str
    timeout_s: float = 5.0
    rise_half_life_s: float = 30.0
    fall_half_life_s: float = 300.0
    min_change: float = 0.02
    clock: Callable[[], float] = field(default=lambda: 0.0)
    tracker: DemandTracker = field(init=False)
    published: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tracker = DemandTracker(self.rise_half_life_s, self.fall_half_life_s)
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        # One quick retry: the next poll comes soon anyway, and a slow failure delays the
        # DemandUnavailable report of every other service.
        self._prom = PrometheusConnect(
            url=self.url,
            disable_ssl=True,
            retry=Retry(total=1, backoff_factor=0.1, status_forcelist=[502, 503, 504]),
            timeout=math.ceil(self.timeout_s),
        )

    def _query(self, promql: str) -> float:
        return parse_rate(
            self._prom.custom_query(
                query=promql, params={"timeout": f"{round(self.timeout_s * 1000)}ms"}
            )
        )

    async def poll(self, services: Iterable[InferenceService]) -> bool:
        """Query every Prometheus-sourced service; True when a published estimate changed."""
        changed = False
        now = self.clock()
        wanted = {s.key: s for s in services if s.spec.demand.source is DemandSource.PROMETHEUS}
        for key in list(self.published):
            if key not in wanted:
                self.published.pop(key)
                self.unavailable.pop(key, None)
                self.tracker.forget(key)
        for key, svc in sorted(wanted.items()):
            promql = render_query(self.query_template, svc)
            try:
                rate = await asyncio.wait_for(
                    asyncio.to_thread(self._query, promql), self.timeout_s + 1
                )
            except Exception as exc:
                reason = f"Prometheus query failed: {type(exc).__name__}: {exc}"[:300]
                if self.unavailable.get(key) is None:
                    changed = True
                self.unavailable[key] = reason
                continue
            if self.unavailable.pop(key, None) is not None:
                changed = True
            estimate = self.tracker.observe(key, now, rate)
            old = self.published.get(key)
            if old is None or abs(estimate - old) > self.min_change * max(old, 1.0):
                self.published[key] = round(estimate, 3)
                changed = True
        return changed

    def view(self) -> DemandView:
        return DemandView(qps=dict(self.published), unavailable=dict(self.unavailable))
