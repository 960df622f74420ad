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

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from accordion.operator.api import split_key
from accordion.operator.control.loop import (
    DemandView,
    ReconcileResult,
    UpdateStatus,
    World,
)
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
PLAN_CHANGES = Counter(
    "accordion_operator_plan_changes",
    "Plans that changed a service's rows (variants, pools, replicas).",
    _SVC,
    registry=REGISTRY,
)
SLO_LATENCY = Gauge(
    "accordion_service_slo_latency_seconds", "spec.slo.latencyMs / 1000.", _SVC, registry=REGISTRY
)
SLO_OBJECTIVE = Gauge(
    "accordion_service_slo_objective", "spec.slo.objective.", _SVC, registry=REGISTRY
)
ACCURACY_FLOOR = Gauge(
    "accordion_service_accuracy_floor", "spec.accuracy.floor / 100.", _SVC, registry=REGISTRY
)
ACCURACY_TARGET = Gauge(
    "accordion_service_accuracy_target",
    "spec.accuracy.target / 100 (absent when unset).",
    _SVC,
    registry=REGISTRY,
)
PLANNED_ACCURACY = Gauge(
    "accordion_service_planned_accuracy",
    "The plan's demand-weighted accuracy / 100.",
    _SVC,
    registry=REGISTRY,
)
DEMAND = Gauge(
    "accordion_service_demand_requests_per_second",
    "Smoothed demand the planner plans for (before headroom).",
    _SVC,
    registry=REGISTRY,
)
CAPACITY = Gauge(
    "accordion_service_capacity_requests_per_second",
    "Capacity of the plan.",
    _SVC,
    registry=REGISTRY,
)
REPLICAS = Gauge(
    "accordion_service_replicas",
    "Worker replicas per variant and pool; state is planned or ready.",
    [*_SVC, "variant", "pool", "state"],
    registry=REGISTRY,
)
CONDITION = Gauge(
    "accordion_service_condition",
    "1 when the condition (Ready, Degraded, DemandUnavailable, ...) is True, else 0.",
    [*_SVC, "condition"],
    registry=REGISTRY,
)

_PER_SERVICE = (
    SLO_LATENCY,
    SLO_OBJECTIVE,
    ACCURACY_FLOOR,
    ACCURACY_TARGET,
    PLANNED_ACCURACY,
    DEMAND,
    CAPACITY,
    REPLICAS,
    CONDITION,
)


class OperatorMetrics:
    """Keeps the registry in step with the control loop's passes."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[tuple[str, str, int], ...]] = {}

    def record_error(self) -> None:
        """A pass that raised before it could reconcile."""
        RECONCILES.labels("error").inc()

    def record(
        self, world: World, demand: DemandView, result: ReconcileResult, plan_time_s: float
    ) -> None:
        """Fold one pass of the loop into the metrics."""
        decision = result.decision
        RECONCILES.labels("error" if result.failed or decision.error else "ok").inc()
        if not result.failed and decision.error is None:
            LAST_RECONCILE.set(time.time())
        if decision.planned:
            PLAN_DURATION.observe(plan_time_s)
        for gauge in _PER_SERVICE:
            gauge.clear()
        for key, isvc in world.services.items():
            labels = split_key(key)
            SLO_LATENCY.labels(*labels).set(isvc.spec.slo.latency_ms / 1000.0)
            SLO_OBJECTIVE.labels(*labels).set(isvc.spec.slo.objective)
            ACCURACY_FLOOR.labels(*labels).set(isvc.spec.accuracy.floor / 100.0)
            if isvc.spec.accuracy.target is not None:
                ACCURACY_TARGET.labels(*labels).set(isvc.spec.accuracy.target / 100.0)
            if key in demand.qps:
                DEMAND.labels(*labels).set(demand.qps[key])
        if decision.plan is not None:
            for svc in decision.plan.services:
                labels = split_key(svc.service)
                CAPACITY.labels(*labels).set(svc.capacity_qps)
                if svc.effective_accuracy is not None:
                    PLANNED_ACCURACY.labels(*labels).set(svc.effective_accuracy / 100.0)
            self._count_changes(decision.plan.rows)
        for wkey, spec in decision.targets.items():
            REPLICAS.labels(*split_key(wkey.service), wkey.variant, wkey.pool, "planned").set(
                spec.replicas
            )
        for wkey, running in world.workers.items():
            REPLICAS.labels(*split_key(wkey.service), wkey.variant, wkey.pool, "ready").set(
                running.ready_replicas
            )
        statuses = dict(world.status)
        statuses.update(
            {s.service: s.status for s in result.applied if isinstance(s, UpdateStatus)}
        )
        for key, status in statuses.items():
            for cond in status.conditions:
                CONDITION.labels(*split_key(key), cond.type).set(1 if cond.status == "True" else 0)

    def _count_changes(self, rows: list[PlanRow]) -> None:
        by_service: dict[str, list[tuple[str, str, int]]] = {}
        for row in rows:
            if row.replicas > 0:
                by_service.setdefault(row.service, []).append((row.variant, row.pool, row.replicas))
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
