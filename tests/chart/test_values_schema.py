"""values.schema.json rejects bad values with a message naming the field, before rendering."""

from __future__ import annotations

import pytest

from .conftest import CHART, run_helm

INVALID = {
    "operator.replicas=two": "/operator/replicas",
    "operator.replicas=-1": "/operator/replicas",
    "operator.logLevel=verbose": "/operator/logLevel",
    "operator.image.pullPolicy=Sometimes": "/operator/image/pullPolicy",
    "operator.ports.metrics=70000": "/operator/ports/metrics",
    "operator.peering.name=Not_A_Name": "/operator/peering/name",
    "operator.planner.timeLimitSeconds=0": "/operator/planner/timeLimitSeconds",
    "operator.watchNamespaces={team-a}": "/operator",
    "operator.mig.configNamespace=GPU_Operator": "/operator/mig/configNamespace",
    "operator.unknownKey=1": "/operator",
    "operator.demand.fallHalfLifeSeconds=0": "/operator/demand/fallHalfLifeSeconds",
    "prometheus.url=ftp://prometheus:9090": "/prometheus/url",
    # The half-lives smooth every demand source, so they moved to operator.demand.
    "prometheus.riseHalfLifeSeconds=30": "/prometheus",
    "prometheus.demandQuery=sum(rate(x[1m]))": "/prometheus/demandQuery",
    "serviceMonitor.enabled=yes": "/serviceMonitor/enabled",
    "podMonitor.interval=fast": "/podMonitor/interval",
    "prometheusRule.runbookBaseUrl=runbooks": "/prometheusRule/runbookBaseUrl",
    "grafanaDashboards.labels.grafana_dashboard=1": "/grafanaDashboards/labels/grafana_dashboard",
    "router.replicas=0": "/router/replicas",
    "workers.port=0": "/workers/port",
    "typoAtTheTop=true": "typoAtTheTop",
}


@pytest.mark.parametrize(("value", "field"), sorted(INVALID.items()))
def test_invalid_values_are_rejected_with_the_field(value: str, field: str) -> None:
    proc = run_helm("template", "accordion", str(CHART), "--set", value)
    assert proc.returncode != 0, f"{value} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert field in proc.stderr, proc.stderr


def test_valid_overrides_are_accepted() -> None:
    proc = run_helm(
        "template",
        "accordion",
        str(CHART),
        "--set",
        "operator.replicas=2,operator.logLevel=debug,prometheus.url=https://prom.example:9090",
        "--set-string",
        "grafanaDashboards.labels.grafana_dashboard=1",
    )
    assert proc.returncode == 0, proc.stderr
