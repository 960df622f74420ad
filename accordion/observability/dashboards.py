"""Grafana dashboards of Accordion, as plain data (Grafana's dashboard JSON model).

Two dashboards, both templated by datasource, namespace and service:

- "Accordion / Services": per InferenceService and per variant: SLO attainment and violation
  ratio (late, dropped, shed separately) against the objective, p50/p99 latency against the
  SLO line, effective accuracy against floor and target, demand against planned capacity,
  routing weights, replicas by variant and pool, batch sizes, queues, shed requests.
- "Accordion / Operator": reconciles, planner solve time, plan changes, conditions, routing
  table reloads.

Written as plain dicts rather than with grafana-foundation-sdk: the JSON model is stable and
small, the generated files are committed (a test regenerates and compares them), and the
queries stay readable next to each other. `queries()` lists every expression, for the tests.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
SVC = 'namespace=~"$namespace", service=~"$service"'
RATE = "$__rate_interval"
BY = "namespace, service"
OK = 'outcome="ok"'
NOT_OK = 'outcome!="ok"'
SHED = 'outcome="shed"'
DROPPED = 'outcome=~"dropped|rejected"'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


def _target(q: Query, ref: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "datasource": DS,
        "expr": q.expr,
        "legendFormat": q.legend or "__auto",
        "refId": ref,
        "range": not q.instant,
        "instant": q.instant,
    }
    return out


class _Layout:
    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.x = 0
        self.y = 0
        self.row_h = 0

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title: str) -> dict[str, Any]:
        self.x, self.y = 0, self.y + self.row_h
        self.row_h = 0
        pos = {"h": 1, "w": 24, "x": 0, "y": self.y}
        self.y += 1
        return {
            "type": "row",
            "id": next(self.ids),
            "title": title,
            "collapsed": False,
            "gridPos": pos,
            "panels": [],
        }


def _panel(
    layout: _Layout,
    kind: str,
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    w: int = 12,
    h: int = 8,
    min_: float | None = None,
    max_: float | None = None,
    thresholds: list[tuple[float | None, str]] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if thresholds:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": c, "value": v} for v, c in thresholds],
        }
    if kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    return {
        "type": kind,
        "id": next(layout.ids),
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": layout.place(w, h),
        "targets": [_target(q, chr(ord("A") + i)) for i, q in enumerate(queries)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options or {},
    }


def _variables(anchor_metric: str) -> dict[str, Any]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-variable"},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return {
        "list": [
            {
                "type": "datasource",
                "name": "datasource",
                "label": "Data source",
                "query": "prometheus",
                "current": {},
                "hide": 0,
            },
            query_var("namespace", "Namespace", f"label_values({anchor_metric}, namespace)"),
            query_var(
                "service",
                "InferenceService",
                f'label_values({anchor_metric}{{namespace=~"$namespace"}}, service)',
            ),
        ]
    }


def _dashboard(
    uid: str, title: str, description: str, panels: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["accordion", "inference", "slo"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "templating": _variables("accordion_router_requests_total"),
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


# ---------------------------------------------------------------------------- services


def sel(metric: str, extra: str = "") -> str:
    """`metric{namespace=~"$namespace", service=~"$service"[, extra]}`."""
    more = f", {extra}" if extra else ""
    return f"{metric}{{{SVC}{more}}}"


def srate(by: str, metric: str, extra: str = "", fn: str = "rate") -> str:
    """`sum by (by) (rate(metric{...}[$__rate_interval]))`."""
    return f"sum by ({by}) ({fn}({sel(metric, extra)}[{RATE}]))"


def _outcomes(selector: str = "") -> str:
    return sel("accordion_router_outcomes_total", selector)


def services_dashboard() -> dict[str, Any]:
    lay = _Layout()
    total = f"sum by ({BY}) (rate({_outcomes()}[{RATE}]))"
    p: list[dict[str, Any]] = [lay.row("Service level")]
    p.append(
        _panel(
            lay,
            "stat",
            "SLO attainment",
            "Requests answered within their deadline, over all requests at the router, in the "
            "selected time range; red below the service's objective.",
            [
                Query(
                    f"sum by ({BY}) (increase({_outcomes(OK)}[$__range]))\n"
                    f"/\nsum by ({BY}) (increase({_outcomes()}[$__range]))",
                    "{{namespace}}/{{service}}",
                    instant=True,
                )
            ],
            unit="percentunit",
            w=8,
            thresholds=[(None, "red"), (0.99, "green")],
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "SLO violation ratio by kind",
            "Late (answered after the deadline), dropped (a worker gave up on it), shed (the "
            "router refused it) and error, as fractions of all requests; the dashed line is the "
            "error budget 1 - objective.",
            [
                Query(
                    f"sum by ({BY}, outcome) (rate({_outcomes(NOT_OK)}[{RATE}]))\n"
                    f"/ on ({BY}) group_left ()\n{total}",
                    "{{service}} {{outcome}}",
                ),
                Query(
                    f"1 - max by ({BY}) ({sel('accordion_service_slo_objective')})",
                    "{{service}} error budget",
                ),
            ],
            unit="percentunit",
            w=16,
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Latency p50 / p99 against the SLO",
            "End-to-end latency of answered requests at the router; the SLO is the service's "
            "latency budget.",
            [
                Query(
                    f"histogram_quantile(0.5, sum by ({BY}, le) "
                    f"(rate({sel('accordion_router_request_latency_seconds_bucket')}[{RATE}])))",
                    "{{service}} p50",
                ),
                Query(
                    f"histogram_quantile(0.99, sum by ({BY}, le) "
                    f"(rate({sel('accordion_router_request_latency_seconds_bucket')}[{RATE}])))",
                    "{{service}} p99",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_slo_latency_seconds')})",
                    "{{service}} SLO",
                ),
            ],
            unit="s",
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "p99 latency by variant",
            "Per backend (variant@pool) of the router.",
            [
                Query(
                    f"histogram_quantile(0.99, sum by ({BY}, variant, le) "
                    f"(rate({sel('accordion_router_request_latency_seconds_bucket')}[{RATE}])))",
                    "{{service}} {{variant}}",
                )
            ],
            unit="s",
            min_=0,
        )
    )
    p.append(lay.row("Accuracy and capacity"))
    p.append(
        _panel(
            lay,
            "timeseries",
            "Effective accuracy against floor and target",
            "Mean accuracy of the requests answered in time (router), the accuracy the plan "
            "expects, and the service's floor and target (accuracy / 100).",
            [
                Query(
                    srate(BY, "accordion_router_accuracy_served_total") + "\n/\n"
                    f"sum by ({BY}) (rate({_outcomes(OK)}[{RATE}]))",
                    "{{service}} served",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_planned_accuracy')})",
                    "{{service}} planned",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_accuracy_floor')})",
                    "{{service}} floor",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_accuracy_target')})",
                    "{{service}} target",
                ),
            ],
            unit="percentunit",
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Demand against planned capacity",
            "Requests arriving at the router, the smoothed demand the operator plans for, the "
            "capacity of the plan, and on top of it the spare (burst) replicas' capacity, which "
            "only the router's fast loop sends to (spec.demand.burst).",
            [
                Query(
                    f"sum by ({BY}) (rate({sel('accordion_router_requests_total')}[{RATE}]))",
                    "{{service}} demand (measured)",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_demand_requests_per_second')})",
                    "{{service}} demand (planned for)",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_capacity_requests_per_second')})",
                    "{{service}} capacity",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_capacity_requests_per_second')})"
                    f" + max by ({BY}) "
                    f"({sel('accordion_service_spare_capacity_requests_per_second')})",
                    "{{service}} capacity with spare replicas",
                ),
            ],
            unit="reqps",
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Traffic by variant",
            "Requests per backend (variant@pool) and the routing weights: the plan's and the "
            "router's effective ones (after health and backlog rerouting).",
            [
                Query(
                    f"sum by ({BY}, variant) (rate({_outcomes()}[{RATE}]))",
                    "{{service}} {{variant}}",
                ),
                Query(
                    f"max by ({BY}, variant, kind) ({sel('accordion_router_weight')})",
                    "{{service}} {{variant}} weight ({{kind}})",
                ),
            ],
            unit="reqps",
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Replicas by variant and pool",
            "Worker pods exporting metrics, and the operator's planned and ready replicas.",
            [
                Query(
                    f"count by ({BY}, variant, pool) ({sel('accordion_worker_queue_depth')})",
                    "{{service}} {{variant}}@{{pool}} running",
                ),
                Query(
                    f"sum by ({BY}, variant, pool, state) ({sel('accordion_service_replicas')})",
                    "{{service}} {{variant}}@{{pool}} {{state}}",
                ),
            ],
            min_=0,
        )
    )
    p.append(lay.row("Workers and batching"))
    p.append(
        _panel(
            lay,
            "heatmap",
            "Batch size distribution",
            "Requests per executed batch, over all workers of the selected services.",
            [
                Query(
                    f"sum by (le) (rate({sel('accordion_worker_batch_size_bucket')}[{RATE}]))",
                    "{{le}}",
                )
            ],
            options={"calculate": False, "yAxis": {"unit": "short"}},
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Mean batch size and execution p99 by variant",
            "Mean requests per batch, and the 99th percentile of a batch's execution time.",
            [
                Query(
                    srate(f"{BY}, variant, pool", "accordion_worker_batch_size_sum")
                    + "\n/\n"
                    + srate(f"{BY}, variant, pool", "accordion_worker_batch_size_count"),
                    "{{variant}}@{{pool}} batch size",
                ),
                Query(
                    f"histogram_quantile(0.99, sum by ({BY}, variant, pool, le) "
                    f"(rate({sel('accordion_worker_execution_latency_seconds_bucket')}[{RATE}])))",
                    "{{variant}}@{{pool}} execution p99 (s)",
                ),
            ],
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Queue depth and backlog",
            "Requests waiting for a batch in each worker, and requests the router has sent to "
            "a backend and not seen answered.",
            [
                Query(
                    f"sum by ({BY}, variant, pool) ({sel('accordion_worker_queue_depth')})",
                    "{{variant}}@{{pool}} queue",
                ),
                Query(
                    f"sum by ({BY}, variant) ({sel('accordion_router_backend_inflight')})",
                    "{{variant}} in flight",
                ),
            ],
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Shed, dropped and rerouted requests",
            "Shed by the router (no backend could make the deadline), dropped or rejected by "
            "workers, sent to another backend than the plan's weights chose, and sent again "
            "to another backend after a worker dropped them.",
            [
                Query(
                    f"sum by ({BY}) (rate({_outcomes(SHED)}[{RATE}]))",
                    "{{service}} shed (router)",
                ),
                Query(
                    f"sum by ({BY}, variant, outcome) (rate("
                    f"{sel('accordion_worker_requests_total', DROPPED)}[{RATE}]))",
                    "{{variant}} {{outcome}} (worker)",
                ),
                Query(
                    srate(f"{BY}, to_variant", "accordion_router_rerouted_total"),
                    "{{service}} rerouted to {{to_variant}}",
                ),
                Query(
                    srate(f"{BY}, to_variant", "accordion_router_retried_total"),
                    "{{service}} dropped, sent again to {{to_variant}}",
                ),
            ],
            unit="reqps",
            w=24,
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Backend slowdown seen by the router",
            "How many times slower than planned each backend is seen to serve batches (1: as "
            "planned). The router counts on the planned capacity divided by this; above 1 for "
            "long, the variant's profile is stale: re-profile it.",
            [
                Query(
                    f"max by ({BY}, variant) ({sel('accordion_router_backend_slowdown')})",
                    "{{variant}}",
                )
            ],
            w=24,
            min_=0,
            thresholds=[(None, "green"), (1.5, "orange"), (3, "red")],
        )
    )
    p.append(lay.row("Scale to zero and cost"))
    cold = "accordion_router_cold_start_seconds"
    p.append(
        _panel(
            lay,
            "timeseries",
            "Cold starts",
            "Mean cold start over the last hour (from the first request the router's activator "
            "held at zero ready replicas to the first ready one), and requests it holds now.",
            [
                Query(
                    f"sum by ({BY}) (increase({sel(cold + '_sum')}[1h])) / "
                    f"sum by ({BY}) (increase({sel(cold + '_count')}[1h]))",
                    "{{service}} mean cold start",
                ),
                Query(
                    f"sum by ({BY}) ({sel('accordion_router_activator_queued')})",
                    "{{service}} held now",
                ),
            ],
            unit="s",
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Activator outcomes",
            "Requests held while no replica was ready: released to a replica, or refused "
            "because their deadline could not be met after the expected cold start, the queue "
            "was full, or the deadline passed while they waited.",
            [
                Query(
                    srate(f"{BY}, result", "accordion_router_activator_requests_total"),
                    "{{service}} {{result}}",
                )
            ],
            unit="reqps",
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Pre-warms",
            "minReplicas 0 services whose silences recur on a schedule: 1 while a replica is "
            "kept or started ahead of the expected return of their traffic; pre-warms over the "
            "last hour, and those the traffic came back within (the rest went unused).",
            [
                Query(
                    f"max by ({BY}) ({sel('accordion_service_prewarmed')})",
                    "{{service}} pre-warmed now",
                ),
                Query(
                    f"sum by ({BY}) (increase({sel('accordion_service_prewarms_total')}[1h]))",
                    "{{service}} pre-warms, last hour",
                ),
                Query(
                    f"sum by ({BY}) (increase({sel('accordion_service_prewarms_met_total')}[1h]))",
                    "{{service}} met, last hour",
                ),
            ],
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Devices held and cost per hour",
            "Devices the service's workers hold (device-seconds per second, per pool; starting "
            "and spare replicas included), and their cost per hour (costPerDevice per "
            "device-hour).",
            [
                Query(
                    srate(f"{BY}, pool", "accordion_service_device_seconds_total"),
                    "{{service}} devices on {{pool}}",
                ),
                Query(
                    f"3600 * {srate(BY, 'accordion_service_cost_total')}",
                    "{{service}} cost per hour",
                ),
            ],
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Cost per 1,000 requests",
            "Over the last hour: cost / arrivals at the router x 1000; and since the operator "
            "began counting (status.costPer1kRequests).",
            [
                Query(
                    f"1000 * sum by ({BY}) (increase({sel('accordion_service_cost_total')}[1h]))"
                    f" / sum by ({BY}) (increase({sel('accordion_router_requests_total')}[1h]))",
                    "{{service}} last hour",
                ),
                Query(
                    f"max by ({BY}) ({sel('accordion_service_cost_per_1k_requests')})",
                    "{{service}} since counting began",
                ),
            ],
            min_=0,
        )
    )
    return _dashboard(
        "accordion-services",
        "Accordion / Services",
        "SLO attainment, latency, accuracy and capacity of every InferenceService.",
        p,
    )


# ---------------------------------------------------------------------------- operator


def operator_dashboard() -> dict[str, Any]:
    lay = _Layout()
    p: list[dict[str, Any]] = [lay.row("Control loop")]
    p.append(
        _panel(
            lay,
            "stat",
            "Since the last reconcile",
            "Time since the control loop last completed a pass.",
            [
                Query(
                    "time() - max(accordion_operator_last_reconcile_timestamp_seconds)",
                    "since last pass",
                    instant=True,
                )
            ],
            unit="s",
            w=6,
            thresholds=[(None, "green"), (120, "orange"), (300, "red")],
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Reconciles by result",
            "Passes of the control loop per second, by result.",
            [
                Query(
                    f"sum by (result) (rate(accordion_operator_reconciles_total[{RATE}]))",
                    "{{result}}",
                )
            ],
            unit="ops",
            w=18,
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Planner solve time",
            "p50 and p99 wall time of one planner solve (OR-Tools).",
            [
                Query(
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(accordion_operator_plan_duration_seconds_bucket[{RATE}])))",
                    "p50",
                ),
                Query(
                    "histogram_quantile(0.99, sum by (le) "
                    f"(rate(accordion_operator_plan_duration_seconds_bucket[{RATE}])))",
                    "p99",
                ),
            ],
            unit="s",
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Plan changes",
            "Plans that changed a service's variants, pools or replicas, per hour.",
            [
                Query(
                    f"sum by ({BY}) (increase({sel('accordion_operator_plan_changes_total')}[1h]))",
                    "{{namespace}}/{{service}}",
                )
            ],
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Plans held back",
            "Re-plans whose model swaps the operator held back, per hour, by reason: the rise "
            "of demand was younger than a replica's start-up (spare replicas and the router's "
            "fast loop absorb it), or in overload the plan's gain would not pay for its swaps. "
            "Their additions on free devices went at once.",
            [
                Query(
                    "sum by (reason) (increase(accordion_operator_plans_held_total[1h]))",
                    "{{reason}}",
                )
            ],
            min_=0,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Router reports by status",
            "Demand reports the operator answered per second, by HTTP status: 200 taken, "
            "401/403 refused for their credentials, 503 not leading.",
            [
                Query(
                    f"sum by (code) (rate(accordion_operator_reports_total[{RATE}]))",
                    "{{code}}",
                )
            ],
            unit="reqps",
            min_=0,
        )
    )
    p.append(lay.row("Services"))
    p.append(
        _panel(
            lay,
            "table",
            "Conditions",
            "Status conditions of every InferenceService (1 = True).",
            [
                Query(
                    f"max by ({BY}, condition) ({sel('accordion_service_condition')})",
                    "{{condition}}",
                    instant=True,
                )
            ],
            w=12,
        )
    )
    p.append(
        _panel(
            lay,
            "timeseries",
            "Routing table reloads",
            "Routing tables adopted (ok) or refused (invalid) by the routers.",
            [
                Query(
                    srate(f"{BY}, result", "accordion_router_table_reloads_total", fn="increase"),
                    "{{service}} {{result}}",
                )
            ],
            w=12,
            min_=0,
        )
    )
    return _dashboard(
        "accordion-operator",
        "Accordion / Operator",
        "The Accordion operator: control loop, planner, conditions, routing tables.",
        p,
    )


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> dashboard."""
    return {"services.json": services_dashboard(), "operator.json": operator_dashboard()}


def queries() -> list[tuple[str, str, Query]]:
    """(dashboard uid, panel title, query) of every panel query."""
    out: list[tuple[str, str, Query]] = []
    for board in dashboards().values():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append(
                    (
                        board["uid"],
                        panel["title"],
                        Query(target["expr"], target["legendFormat"], target["instant"]),
                    )
                )
    return out


def variable_queries() -> list[str]:
    """The `label_values(...)` metric selectors of the template variables."""
    out = []
    for board in dashboards().values():
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                out.append(var["definition"])
    return out
