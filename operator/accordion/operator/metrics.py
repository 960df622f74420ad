"""The operator's Prometheus metrics: is the control loop alive, what did it plan, and why.

The dashboards and alerts (`accordion.observability`) are written against a contract of metric
names and labels (`accordion.observability.metrics.OPERATOR_METRICS`); this module is the
operator's side of it, and a test keeps the two equal. `OperatorMetrics.record` is called after
every pass of the control loop with what the pass saw and decided; it touches nothing else, so
the loop stays free of Prometheus. Per-service series are labelled with the InferenceService's
`namespace` and `service` (its name), like the PodMonitor labels of the routers and workers.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accordion.operator.api import split_key
from accordion.operator.control.cost import ServiceCost
from accordion.operator.control.idle import IdleTracker
from accordion.operator.control.loop import (
    DemandView,
    ReconcileResult,
    UpdateStatus,
    World,
)
from accordion.operator.control.swaps import SwapGate
from accordion.solver import PlanRow

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
"""The operator's own registry (no process/platform collectors: only the contract's families)."""

_SVC = ("namespace", "service")

RECONCILES = Counter(
    "accordion_operator_reconciles",
    "Passes of the control loop by result (ok, error).",
    ["result"],
    registry=REGISTRY,
)
LAST_RECONCILE = Gauge(
    "accordion_operator_last_reconcile_timestamp_seconds",
    "Unix time of the last successful pass of the control loop.",
    registry=REGISTRY,
)
PLAN_DURATION = Histogram(
    "accordion_operator_plan_duration_seconds",
    "Wall time of one planner solve.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
REPORTS = Counter(
    "accordion_operator_reports",
    "Router reports answered by the operator's report endpoint, by HTTP status code (200 taken;"
    " 401/403 refused for their credentials; 400, 404, 413, 429 refused; 503 not leading or"
    " the token could not be reviewed).",
    ["code"],
    registry=REGISTRY,
)
PLAN_CHANGES = Counter(
    "accordion_operator_plan_changes",
    "Plans that changed a service's rows (variants, pools, replicas).",
    _SVC,
    registry=REGISTRY,
)


@dataclass(frozen=True)
class _Family:
    name: str
    help: str
    labels: tuple[str, ...] = _SVC


SLO_LATENCY = _Family("accordion_service_slo_latency_seconds", "spec.slo.latencyMs / 1000.")
SLO_OBJECTIVE = _Family("accordion_service_slo_objective", "spec.slo.objective.")
ACCURACY_FLOOR = _Family("accordion_service_accuracy_floor", "spec.accuracy.floor / 100.")
ACCURACY_TARGET = _Family(
    "accordion_service_accuracy_target", "spec.accuracy.target / 100 (absent when unset)."
)
PLANNED_ACCURACY = _Family(
    "accordion_service_planned_accuracy", "The plan's demand-weighted accuracy / 100."
)
DEMAND = _Family(
    "accordion_service_demand_requests_per_second",
    "Smoothed demand the planner plans for (before headroom).",
)
CAPACITY = _Family("accordion_service_capacity_requests_per_second", "Capacity of the plan.")
SPARE_CAPACITY = _Family(
    "accordion_service_spare_capacity_requests_per_second",
    "Capacity of the spare (burst) replicas beyond the plan's (spec.demand.burst).",
)
REPLICAS = _Family(
    "accordion_service_replicas",
    "Worker replicas per variant and pool; state is planned or ready.",
    (*_SVC, "variant", "pool", "state"),
)
CONDITION = _Family(
    "accordion_service_condition",
    "1 when the condition (Ready, Degraded, DemandUnavailable, ...) is True, else 0.",
    (*_SVC, "condition"),
)
PREWARMED = _Family(
    "accordion_service_prewarmed",
    "1 while a minReplicas 0 service's replica is kept or started ahead of an expected return "
    "of its traffic (pre-warm), else 0.",
)

_PER_SERVICE = (
    SLO_LATENCY,
    SLO_OBJECTIVE,
    ACCURACY_FLOOR,
    ACCURACY_TARGET,
    PLANNED_ACCURACY,
    DEMAND,
    CAPACITY,
    SPARE_CAPACITY,
    REPLICAS,
    CONDITION,
    PREWARMED,
)

Samples = dict[str, list[tuple[tuple[str, ...], float]]]


class _PerServiceCollector(Collector):
    """The per-service gauges, from the samples of the last pass.

    A pass replaces them all (services come and go), so they are kept as plain (labels, value)
    pairs and turned into metric families when scraped, instead of a `Gauge` child (with its
    lock and value object) per series: at a thousand services some 11,000 of them, cleared
    and made again at every pass.
    """

    def __init__(self) -> None:
        self.samples: Samples = {}

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(f.name, f.help, labels=f.labels) for f in _PER_SERVICE]

    def collect(self) -> Iterable[Metric]:
        samples = self.samples  # replaced whole by a pass, never changed in place
        for f in _PER_SERVICE:
            family = GaugeMetricFamily(f.name, f.help, labels=f.labels)
            for labels, value in samples.get(f.name, ()):
                family.add_metric(labels, value)
            yield family


PER_SERVICE = _PerServiceCollector()
REGISTRY.register(PER_SERVICE)

_V = TypeVar("_V")


class _LastPassCollector(Collector, Generic[_V]):
    """Metric families made, when scraped, from what the last pass handed over: `data`, one
    value per key, replaced whole by a pass and never changed in place. Described with none."""

    def __init__(self, data: Mapping[str, _V] | None = None) -> None:
        self.data: Mapping[str, _V] = data if data is not None else {}

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        return self._families(self.data)

    def _families(self, data: Mapping[str, _V]) -> list[Metric]:
        raise NotImplementedError


DEVICE_SECONDS = "accordion_service_device_seconds_total"
COST = "accordion_service_cost_total"
COST_PER_1K = "accordion_service_cost_per_1k_requests"


class _CostCollector(_LastPassCollector[ServiceCost]):
    """What each service costs (`control.cost.CostMeter`), as of the last pass: counters of
    device-seconds (per pool) and cost, and the cost per 1,000 requests."""

    def _families(self, totals: Mapping[str, ServiceCost]) -> list[Metric]:
        held = CounterMetricFamily(
            DEVICE_SECONDS,
            "Device-seconds the service's workers held (replicas x time), per pool.",
            labels=(*_SVC, "pool"),
        )
        cost = CounterMetricFamily(
            COST,
            "Cost of those device-seconds: device-hours x the pool's costPerDevice.",
            labels=_SVC,
        )
        per_1k = GaugeMetricFamily(
            COST_PER_1K,
            "Cost per 1,000 requests since the operator began counting (status).",
            labels=_SVC,
        )
        for key, total in sorted(totals.items()):
            labels = split_key(key)
            for pool, seconds in sorted(total.device_seconds_by_pool.items()):
                held.add_metric((*labels, pool), seconds)
            cost.add_metric(labels, total.cost)
            if total.cost_per_1k_requests is not None:
                per_1k.add_metric(labels, total.cost_per_1k_requests)
        return [held, cost, per_1k]


COSTS = _CostCollector()
REGISTRY.register(COSTS)

PREWARMS = "accordion_service_prewarms"
PREWARMS_MET = "accordion_service_prewarms_met"


class _PrewarmCollector(_LastPassCollector[tuple[int, int]]):
    """Each minReplicas 0 service's pre-warms (`control.idle.IdleTracker`), as of the last
    pass: counters of those started and of those its traffic came back within."""

    def _families(self, counts: Mapping[str, tuple[int, int]]) -> list[Metric]:
        started = CounterMetricFamily(
            PREWARMS,
            "Pre-warms: a replica kept or started ahead of an expected return of the traffic.",
            labels=_SVC,
        )
        met = CounterMetricFamily(
            PREWARMS_MET,
            "Pre-warms the service's traffic came back within (the rest went unused).",
            labels=_SVC,
        )
        for key, (n, hits) in sorted(counts.items()):
            labels = split_key(key)
            started.add_metric(labels, n)
            met.add_metric(labels, hits)
        return [started, met]


PREWARM_COUNTS = _PrewarmCollector()
REGISTRY.register(PREWARM_COUNTS)

PLANS_HELD = "accordion_operator_plans_held_total"


class _PlansHeldCollector(_LastPassCollector[int]):
    """Re-plans whose model swaps the loop held back (`control.swaps.SwapGate.held`), by
    reason, as of the last pass: a counter per reason, every reason present from the start."""

    def _families(self, counts: Mapping[str, int]) -> list[Metric]:
        held = CounterMetricFamily(
            PLANS_HELD,
            "Re-plans whose model swaps were held back, by reason: rise_younger_than_startup "
            "(the rise of demand is younger than a replica's start-up; spare replicas and the "
            "router's fast loop absorb it meanwhile), swaps_not_paid_back (in overload, the "
            "plan's gain would not make up for what its swaps leave unserved while they "
            "start). Their additions on free devices go at once.",
            labels=("reason",),
        )
        for reason, n in sorted(counts.items()):
            held.add_metric((reason,), n)
        return [held]


PLANS_HELD_COUNTS = _PlansHeldCollector(SwapGate().held())
REGISTRY.register(PLANS_HELD_COUNTS)


class OperatorMetrics:
    """Keeps the registry in step with the control loop's passes."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[tuple[str, str, int], ...]] = {}

    def record_error(self) -> None:
        """A pass that raised before it could reconcile."""
        RECONCILES.labels("error").inc()

    def record(
        self,
        world: World,
        demand: DemandView,
        result: ReconcileResult,
        plan_time_s: float,
        cost: Mapping[str, ServiceCost] | None = None,
        idle: IdleTracker | None = None,
        held: Mapping[str, int] | None = None,
    ) -> None:
        """Fold one pass of the loop into the metrics; `cost`: the loop's cost meter totals;
        `idle`: its idle tracker (pre-warms of the `minReplicas: 0` services); `held`: the
        plans its swap gate held back so far, by reason (`SwapGate.held`)."""
        if held is not None:
            PLANS_HELD_COUNTS.data = dict(held)
        if cost is not None:
            COSTS.data = {
                k: ServiceCost(v.device_seconds, v.cost, v.requests, dict(v.device_seconds_by_pool))
                for k, v in cost.items()
            }
        decision = result.decision
        RECONCILES.labels("error" if result.failed or decision.error else "ok").inc()
        if not result.failed and decision.error is None:
            LAST_RECONCILE.set(time.time())
        if decision.planned:
            PLAN_DURATION.observe(plan_time_s)
        samples: Samples = {f.name: [] for f in _PER_SERVICE}

        def put(family: _Family, labels: tuple[str, ...], value: float) -> None:
            samples[family.name].append((labels, float(value)))

        for key, isvc in world.services.items():
            labels = split_key(key)
            put(SLO_LATENCY, labels, isvc.spec.slo.latency_ms / 1000.0)
            put(SLO_OBJECTIVE, labels, isvc.spec.slo.objective)
            put(ACCURACY_FLOOR, labels, isvc.spec.accuracy.floor / 100.0)
            if isvc.spec.accuracy.target is not None:
                put(ACCURACY_TARGET, labels, isvc.spec.accuracy.target / 100.0)
            if key in demand.qps:
                put(DEMAND, labels, demand.qps[key])
        if decision.plan is not None:
            for svc in decision.plan.services:
                labels = split_key(svc.service)
                put(CAPACITY, labels, svc.capacity_qps)
                put(SPARE_CAPACITY, labels, svc.spare_capacity_qps)
                if svc.effective_accuracy is not None:
                    put(PLANNED_ACCURACY, labels, svc.effective_accuracy / 100.0)
            self._count_changes(decision.plan.rows)
        replicas: dict[tuple[str, ...], float] = {}
        for wkey, spec in decision.targets.items():
            replicas[(*split_key(wkey.service), wkey.variant, wkey.pool, "planned")] = spec.replicas
        for wkey, running in world.workers.items():
            replicas[(*split_key(wkey.service), wkey.variant, wkey.pool, "ready")] = (
                running.ready_replicas
            )
        for series, value in replicas.items():
            put(REPLICAS, series, value)
        statuses = dict(world.status)
        statuses.update(
            {s.service: s.status for s in result.applied if isinstance(s, UpdateStatus)}
        )
        conditions: dict[tuple[str, ...], float] = {}
        for key, status in statuses.items():
            for cond in status.conditions:
                conditions[(*split_key(key), cond.type)] = 1 if cond.status == "True" else 0
        for series, value in conditions.items():
            put(CONDITION, series, value)
        if idle is not None:
            counts = {}
            for key, isvc in world.services.items():
                if isvc.spec.min_replicas == 0:
                    put(PREWARMED, split_key(key), 1 if key in idle.prewarmed else 0)
                    counts[key] = (idle.prewarms.get(key, 0), idle.prewarms_met.get(key, 0))
            PREWARM_COUNTS.data = counts
        PER_SERVICE.samples = samples

    def _count_changes(self, rows: list[PlanRow]) -> None:
        by_service: dict[str, list[tuple[str, str, int]]] = {}
        for row in rows:
            if row.replicas > 0:  # a pipeline by its id: two may start on one pool
                where = row.pipeline or row.pool
                by_service.setdefault(row.service, []).append((row.variant, where, row.replicas))
        for service, service_rows in by_service.items():
            current = tuple(sorted(service_rows))
            if self._rows.get(service) != current:
                PLAN_CHANGES.labels(*split_key(service)).inc()
                self._rows[service] = current
        for service in set(self._rows) - set(by_service):
            del self._rows[service]


def serve_from_env(env_var: str = "ACCORDION_METRICS_PORT") -> int | None:
    """Serve `/metrics` on the port named by the environment (the chart sets it); else nothing.

    A port that cannot be bound is logged and skipped: metrics are worth less than the loop.
    """
    raw = os.environ.get(env_var, "").strip()
    if not raw:
        return None
    try:
        port = int(raw)
        start_http_server(port, registry=REGISTRY)
    except (ValueError, OSError) as exc:
        log.warning("not serving metrics on %s=%r: %s", env_var, raw, exc)
        return None
    log.info("serving metrics on :%d/metrics", port)
    return port
