"""The metric contract the dashboards and alerts are written against.

Router and worker metrics are what `accordion.workers.router` and `accordion.workers.server`
export (tests compare this module with their real `/metrics` output). Operator metrics are the
contract the operator's `/metrics` endpoint must meet: the per-service gauges carry the
InferenceService's `namespace` and `service` (its name) labels; accuracies are on the router's
scale (the spec's accuracy / 100).

Labels added at scrape time (the chart's PodMonitors, or a static scrape config in local
mode): every router and worker series gets `namespace` and `service` (the InferenceService's
namespace and name, which take precedence over the router's own `service` label, kept as
`exported_service`); worker series also get `variant` and `pool`. Router series carry
`variant` themselves, as `<variant>@<pool>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Metric:
    name: str
    type: MetricType
    labels: frozenset[str]
    help: str = ""

    def series_names(self) -> frozenset[str]:
        """The names of the series Prometheus stores for it."""
        if self.type == "histogram":
            return frozenset(f"{self.name}_{s}" for s in ("bucket", "sum", "count"))
        return frozenset({self.name})

    def series_labels(self, series: str) -> frozenset[str]:
        return self.labels | {"le"} if series.endswith("_bucket") else self.labels


def _m(name: str, type_: MetricType, *labels: str, help: str = "") -> Metric:
    return Metric(name, type_, frozenset(labels), help)


SCRAPE_LABELS = frozenset({"job", "instance", "pod"})
ROUTER_TARGET_LABELS = frozenset({"namespace", "service"})
WORKER_TARGET_LABELS = frozenset({"namespace", "service", "variant", "pool"})

ROUTER_METRICS = (
    _m("accordion_router_requests_total", "counter", "service"),
    _m("accordion_router_outcomes_total", "counter", "service", "variant", "outcome"),
    _m("accordion_router_accuracy_served_total", "counter", "service", "variant"),
    _m("accordion_router_rerouted_total", "counter", "service", "from_variant", "to_variant"),
    _m("accordion_router_retried_total", "counter", "service", "from_variant", "to_variant"),
    _m("accordion_router_request_latency_seconds", "histogram", "service", "variant"),
    _m("accordion_router_backend_inflight", "gauge", "service", "variant"),
    _m("accordion_router_weight", "gauge", "service", "variant", "kind"),
    _m("accordion_router_backend_healthy", "gauge", "service", "variant"),
    _m("accordion_router_backend_slowdown", "gauge", "service", "variant"),
    _m("accordion_router_table_reloads_total", "counter", "service", "result"),
    _m("accordion_router_cold_start_seconds", "histogram", "service"),
    _m("accordion_router_activator_queued", "gauge", "service"),
    _m("accordion_router_activator_requests_total", "counter", "service", "result"),
)

WORKER_METRICS = (
    _m("accordion_worker_requests_total", "counter", "model", "outcome"),
    _m("accordion_worker_request_latency_seconds", "histogram", "model"),
    _m("accordion_worker_execution_latency_seconds", "histogram", "model"),
    _m("accordion_worker_batch_size", "histogram", "model"),
    _m("accordion_worker_queue_depth", "gauge", "model"),
    _m("accordion_worker_predicted_latency_seconds", "gauge", "model", "batch_size"),
    _m("accordion_worker_observed_latency_seconds", "gauge", "model", "batch_size"),
    _m("accordion_worker_served_latency_seconds", "gauge", "model", "batch_size", "quantile"),
    _m("accordion_worker_served_batches", "gauge", "model", "batch_size"),
)

_SVC = ("namespace", "service")
OPERATOR_METRICS = (
    _m(
        "accordion_operator_reconciles_total",
        "counter",
        "result",
        help="Passes of the control loop by result (ok, error).",
    ),
    _m(
        "accordion_operator_last_reconcile_timestamp_seconds",
        "gauge",
        help="Unix time of the last successful pass of the control loop.",
    ),
    _m(
        "accordion_operator_plan_duration_seconds",
        "histogram",
        help="Wall time of one planner solve.",
    ),
    _m(
        "accordion_operator_plans_held_total",
        "counter",
        "reason",
        help=(
            "Re-plans whose model swaps were held back, by reason: rise_younger_than_startup"
            " (the rise of demand is younger than a replica's start-up), swaps_not_paid_back"
            " (in overload, the plan's gain would not pay for its swaps)."
        ),
    ),
    _m(
        "accordion_operator_plan_changes_total",
        "counter",
        *_SVC,
        help="Plans that changed a service's rows (variants, pools, replicas).",
    ),
    _m(
        "accordion_operator_reports_total",
        "counter",
        "code",
        help=(
            "Router reports answered by the operator's report endpoint, by HTTP status code"
            " (200 taken; 401/403 refused for their credentials; 400, 404, 413, 429 refused;"
            " 503 not leading or the token could not be reviewed)."
        ),
    ),
    _m("accordion_service_slo_latency_seconds", "gauge", *_SVC, help="spec.slo.latencyMs / 1000."),
    _m("accordion_service_slo_objective", "gauge", *_SVC, help="spec.slo.objective."),
    _m("accordion_service_accuracy_floor", "gauge", *_SVC, help="spec.accuracy.floor / 100."),
    _m(
        "accordion_service_accuracy_target",
        "gauge",
        *_SVC,
        help="spec.accuracy.target / 100 (absent when unset).",
    ),
    _m(
        "accordion_service_planned_accuracy",
        "gauge",
        *_SVC,
        help="The plan's demand-weighted accuracy / 100.",
    ),
    _m(
        "accordion_service_demand_requests_per_second",
        "gauge",
        *_SVC,
        help="Smoothed demand the planner plans for (before headroom).",
    ),
    _m(
        "accordion_service_capacity_requests_per_second",
        "gauge",
        *_SVC,
        help="Capacity of the plan.",
    ),
    _m(
        "accordion_service_spare_capacity_requests_per_second",
        "gauge",
        *_SVC,
        help="Capacity of the spare (burst) replicas beyond the plan's (spec.demand.burst).",
    ),
    _m(
        "accordion_service_replicas",
        "gauge",
        *_SVC,
        "variant",
        "pool",
        "state",
        help="Worker replicas per variant and pool; state is planned or ready.",
    ),
    _m(
        "accordion_service_condition",
        "gauge",
        *_SVC,
        "condition",
        help="1 when the condition (Ready, Degraded, DemandUnavailable, ...) is True, else 0.",
    ),
    _m(
        "accordion_service_prewarmed",
        "gauge",
        *_SVC,
        help="1 while a minReplicas 0 service's replica is kept or started ahead of an expected "
        "return of its traffic (pre-warm), else 0.",
    ),
    _m(
        "accordion_service_prewarms_total",
        "counter",
        *_SVC,
        help="Pre-warms: a replica kept or started ahead of an expected return of the traffic.",
    ),
    _m(
        "accordion_service_prewarms_met_total",
        "counter",
        *_SVC,
        help="Pre-warms the service's traffic came back within (the rest went unused).",
    ),
    _m(
        "accordion_service_device_seconds_total",
        "counter",
        *_SVC,
        "pool",
        help="Device-seconds the service's workers held (replicas x time), per pool.",
    ),
    _m(
        "accordion_service_cost_total",
        "counter",
        *_SVC,
        help="Cost of those device-seconds: device-hours x the pool's costPerDevice.",
    ),
    _m(
        "accordion_service_cost_per_1k_requests",
        "gauge",
        *_SVC,
        help="Cost per 1,000 requests since the operator began counting (status).",
    ),
)

# Series that exist only after an event (a reroute, a table reload, a shed request): a query
# over them may rightly return nothing on a healthy system.
EVENT_DRIVEN = frozenset(
    {
        "accordion_router_rerouted_total",
        "accordion_router_retried_total",
        "accordion_router_table_reloads_total",
        "accordion_router_cold_start_seconds_bucket",
        "accordion_router_cold_start_seconds_sum",
        "accordion_router_cold_start_seconds_count",
        "accordion_router_activator_queued",
        "accordion_router_activator_requests_total",
        "accordion_operator_reports_total",
        # Only for minReplicas 0 services (a cluster may have none).
        "accordion_service_prewarmed",
        "accordion_service_prewarms_total",
        "accordion_service_prewarms_met_total",
    }
)


def catalog() -> dict[str, frozenset[str]]:
    """Every series name the dashboards may use, with the labels it can carry after scraping."""
    out: dict[str, frozenset[str]] = {}
    for metrics, extra in (
        (ROUTER_METRICS, ROUTER_TARGET_LABELS | {"exported_service"}),
        (WORKER_METRICS, WORKER_TARGET_LABELS),
        (OPERATOR_METRICS, frozenset()),
    ):
        for m in metrics:
            for series in m.series_names():
                out[series] = m.series_labels(series) | extra | SCRAPE_LABELS
    out["up"] = SCRAPE_LABELS | ROUTER_TARGET_LABELS | WORKER_TARGET_LABELS
    return out
