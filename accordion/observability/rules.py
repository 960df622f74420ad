"""Prometheus recording rules and alerts of Accordion.

SLO alerts follow the multi-window, multi-burn-rate pattern of the Google SRE workbook
("Alerting on SLOs"): the violation ratio of a service (requests answered late, dropped, shed
or failed, over all requests, at its router) is compared with its error budget
`1 - spec.slo.objective` (0.01 when the operator does not export the objective), each burn
rate in a long window *and* a short one, so that an alert fires fast on a fast burn and
resets soon after the burn stops:

=========  ============  ===========  ============================
severity   burn rate     long window  short window (1/12 of long)
=========  ============  ===========  ============================
critical   14.4          1h           5m     (2% of a 30d budget in 1h)
critical   6             6h           30m    (5% in 6h)
warning    3             1d           2h     (10% in 1d)
warning    1             3d           6h     (10% in 3d)
=========  ============  ===========  ============================

The other alerts: accuracy below the floor (the mean accuracy of what was answered in time,
at the router), demand above capacity (the operator's Degraded condition, or measured demand
above the plan's capacity), demand not measurable, router reports refused for their credentials,
and the operator not reconciling or gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

BY = "namespace, service"
DEFAULT_OBJECTIVE = 0.99  # the CRD's default spec.slo.objective
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class BurnRateWindow:
    severity: str
    factor: float
    long: str
    short: str
    for_: str


BURN_RATES = (
    BurnRateWindow("critical", 14.4, "1h", "5m", "2m"),
    BurnRateWindow("critical", 6.0, "6h", "30m", "15m"),
    BurnRateWindow("warning", 3.0, "1d", "2h", "1h"),
    BurnRateWindow("warning", 1.0, "3d", "6h", "3h"),
)


@dataclass(frozen=True)
class Rule:
    expr: str
    record: str | None = None
    alert: str | None = None
    for_: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.record:
            out["record"] = self.record
        if self.alert:
            out["alert"] = self.alert
        out["expr"] = self.expr
        if self.for_:
            out["for"] = self.for_
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def violation_ratio(window: str) -> str:
    return f"accordion:slo_violation_ratio:rate{window}"


def recording_rules() -> list[Rule]:
    rules = [
        Rule(
            record=violation_ratio(w),
            expr=(
                f'sum by ({BY}) (rate(accordion_router_outcomes_total{{outcome!="ok"}}[{w}]))\n'
                f"/\nsum by ({BY}) (rate(accordion_router_outcomes_total[{w}]))"
            ),
        )
        for w in WINDOWS
    ]
    rules += [
        Rule(
            record="accordion:slo_error_budget:ratio",
            expr=(
                f"1 - (\n  max by ({BY}) (accordion_service_slo_objective)\n"
                f"  or on ({BY})\n"
                f"  (0 * max by ({BY}) ({violation_ratio('5m')}) + {DEFAULT_OBJECTIVE})\n)"
            ),
        ),
        Rule(
            record="accordion:demand_requests:rate5m",
            expr=f"sum by ({BY}) (rate(accordion_router_requests_total[5m]))",
        ),
        Rule(
            record="accordion:served_accuracy:rate5m",
            expr=(
                f"sum by ({BY}) (rate(accordion_router_accuracy_served_total[5m]))\n/\n"
                f'sum by ({BY}) (rate(accordion_router_outcomes_total{{outcome="ok"}}[5m]))'
            ),
        ),
    ]
    return rules


def _burn(w: BurnRateWindow) -> str:
    budget = f"on ({BY}) group_left () ({w.factor:g} * accordion:slo_error_budget:ratio)"
    return (
        f"(\n  {violation_ratio(w.long)} > {budget}\n  and\n"
        f"  {violation_ratio(w.short)} > {budget}\n)"
    )


def _burn_alert(name: str, severity: str, summary: str) -> Rule:
    windows = [w for w in BURN_RATES if w.severity == severity]
    return Rule(
        alert=name,
        expr="\nor\n".join(_burn(w) for w in windows),
        for_=windows[0].for_,
        labels={"severity": severity},
        annotations={
            "summary": summary,
            "description": (
                "{{ $labels.namespace }}/{{ $labels.service }} violates its latency SLO "
                "(late, dropped, shed or failed requests): {{ $value | humanizePercentage }} of "
                "requests, burning the error budget "
                + ", ".join(f"{w.factor:g}x over {w.long}" for w in windows)
                + " or faster."
            ),
        },
    )


def alert_rules() -> list[Rule]:
    return [
        _burn_alert(
            "AccordionSLOBurnRateCritical",
            "critical",
            "An InferenceService burns its SLO error budget fast.",
        ),
        _burn_alert(
            "AccordionSLOBurnRateWarning",
            "warning",
            "An InferenceService burns its SLO error budget.",
        ),
        Rule(
            alert="AccordionAccuracyBelowFloor",
            expr=(
                "accordion:served_accuracy:rate5m\n"
                f"< on ({BY}) group_left ()\n"
                f"max by ({BY}) (accordion_service_accuracy_floor)"
            ),
            for_="10m",
            labels={"severity": "warning"},
            annotations={
                "summary": "Requests are served below the accuracy floor.",
                "description": (
                    "The mean accuracy of requests {{ $labels.namespace }}/"
                    "{{ $labels.service }} answers in time is {{ $value }}, below its "
                    "spec.accuracy.floor."
                ),
            },
        ),
        Rule(
            alert="AccordionDemandAboveCapacity",
            expr=(
                f'max by ({BY}) (accordion_service_condition{{condition="Degraded"}}) == 1\n'
                "or\n"
                "accordion:demand_requests:rate5m\n"
                f"> on ({BY}) group_left ()\n"
                f"max by ({BY}) (accordion_service_capacity_requests_per_second)"
            ),
            for_="10m",
            labels={"severity": "warning"},
            annotations={
                "summary": "Demand exceeds what can be served above the accuracy floor.",
                "description": (
                    "{{ $labels.namespace }}/{{ $labels.service }} is Degraded: the devices "
                    "of its DevicePools cannot serve all its demand at or above the accuracy "
                    "floor. Add devices, lower the floor, or shed load upstream."
                ),
            },
        ),
        Rule(
            alert="AccordionDemandUnavailable",
            expr=(
                f'max by ({BY}) (accordion_service_condition{{condition="DemandUnavailable"}}) == 1'
            ),
            for_="10m",
            labels={"severity": "warning"},
            annotations={
                "summary": "The operator cannot measure a service's demand.",
                "description": (
                    "Prometheus queries for {{ $labels.namespace }}/{{ $labels.service }} fail; "
                    "the operator plans for the last estimate (or spec.demand.qps)."
                ),
            },
        ),
        Rule(
            alert="AccordionReportsRefused",
            expr='sum(rate(accordion_operator_reports_total{code=~"401|403"}[10m])) > 0',
            for_="15m",
            labels={"severity": "warning"},
            annotations={
                "summary": "The operator refuses routers' demand reports.",
                "description": (
                    "Router reports are refused for their credentials (401 or 403) at "
                    "{{ $value | humanize }}/s: the operator plans for demand it does not see "
                    "from those routers. Check the routers' projected token (audience "
                    "accordion-reports), operator.reports.authentication, and that each "
                    "router reports only services of its own namespace."
                ),
            },
        ),
        Rule(
            alert="AccordionOperatorNotReconciling",
            expr=(
                "time() - max(accordion_operator_last_reconcile_timestamp_seconds) > 300\n"
                "or\n"
                'sum(rate(accordion_operator_reconciles_total{result="error"}[10m])) > 0\n'
                'unless\nsum(rate(accordion_operator_reconciles_total{result="ok"}[10m])) > 0'
            ),
            for_="5m",
            labels={"severity": "critical"},
            annotations={
                "summary": "The Accordion operator is not reconciling.",
                "description": (
                    "No successful pass of the control loop for more than 5 minutes: plans, "
                    "workers and routing tables are not updated as demand changes. Check the "
                    "operator's logs."
                ),
            },
        ),
        Rule(
            alert="AccordionOperatorDown",
            expr="absent(accordion_operator_last_reconcile_timestamp_seconds)",
            for_="10m",
            labels={"severity": "critical"},
            annotations={
                "summary": "The Accordion operator exports no metrics.",
                "description": (
                    "Prometheus has no metrics from the Accordion operator: it is down, or not "
                    "scraped (enable serviceMonitor in the chart)."
                ),
            },
        ),
    ]


def rule_groups() -> dict[str, Any]:
    """The `groups:` document of a Prometheus rule file (and of a PrometheusRule's spec)."""
    return {
        "groups": [
            {
                "name": "accordion.slo.rules",
                "interval": "30s",
                "rules": [r.to_dict() for r in recording_rules()],
            },
            {"name": "accordion.alerts", "rules": [r.to_dict() for r in alert_rules()]},
        ]
    }
