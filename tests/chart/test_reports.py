"""The report channel from values to pods: the chart's reports Service (selecting the pod the
leader labels) and the Role that lets it label its pod, the settings the operator reads
(`report_port`, `report_url`, ...), the router pods the operator builds with them
(`--report-url` and their identity), and the router CLI that accepts that command line. Off:
no Service, no Role, no flags.
"""

from __future__ import annotations

import pytest

from .conftest import CHART, by_kind, objects, run_helm
from .test_images_and_pods import data_plane, operator_pod, settings
from .test_rbac import allowed, operator_sources, required_access


def test_reports_reach_the_leader_through_its_service() -> None:
    objs = objects()
    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    reports = services["accordion-reports"]
    (port,) = reports["spec"]["ports"]
    assert port["port"] == 8082
    assert port["targetPort"] == "reports"
    pod = operator_pod()
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["reports"] == 8082
    # The Service's only endpoint is the pod the leader labelled (LEADER_LABEL).
    leaderlabel = pytest.importorskip("accordion.operator.leaderlabel")
    (deployment,) = by_kind(objs, "Deployment")
    assert reports["spec"]["selector"] == {
        **deployment["spec"]["selector"]["matchLabels"],
        leaderlabel.LEADER_LABEL: "true",
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # ... which it may write on the pods of its own namespace, and only there.
    (role,) = by_kind(objs, "Role")
    assert role["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    (binding,) = by_kind(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]

    config = settings()
    assert config.report_port == 8082
    assert (
        config.report_url
        == "http://accordion-reports.accordion-system.svc.cluster.local:8082/v1/reports"
    )
    assert (config.report_interval_s, config.report_heartbeat_s) == (1.0, 10.0)
    assert config.report_confirm_timeout_s == 60.0

    _, router = data_plane()
    (container,) = router["containers"]
    args = container["args"]
    assert args[args.index("--report-url") + 1] == config.report_url
    assert args[args.index("--report-interval") + 1] == "1"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}

    # The router's CLI takes that command line.
    typer_testing = pytest.importorskip("typer.testing")
    cli = pytest.importorskip("accordion.workers.cli")
    result = typer_testing.CliRunner().invoke(cli.app, [*container["command"][1:], *args, "--help"])
    assert result.exit_code == 0, result.output


def test_values_reach_the_settings_and_reports_can_be_off() -> None:
    sets = (
        "operator.ports.reports=9443",
        "operator.reports.intervalSeconds=2",
        "operator.reports.heartbeatSeconds=30",
    )
    config = settings(*sets)
    assert config.report_port == 9443
    assert config.report_url is not None
    assert config.report_url.endswith(":9443/v1/reports")
    assert (config.report_interval_s, config.report_heartbeat_s) == (2.0, 30.0)
    args = data_plane(*sets)[1]["containers"][0]["args"]
    assert args[args.index("--report-interval") + 1] == "2"

    off = "operator.reports.enabled=false"
    assert "accordion-reports" not in {
        s["metadata"]["name"] for s in by_kind(objects(off), "Service")
    }
    assert not by_kind(objects(off), "Role")
    (container,) = operator_pod(off)["containers"]
    assert "reports" not in {p["name"] for p in container["ports"]}
    config = settings(off)
    assert config.report_port is None
    assert config.report_url is None
    assert "--report-url" not in data_plane(off)[1]["containers"][0]["args"]


def _token_reviews(*sets: str) -> set[tuple[str, str, str]]:
    granted = allowed(r for o in objects(*sets) if o["kind"] == "ClusterRole" for r in o["rules"])
    return {a for a in granted if a[1] == "tokenreviews"}


def test_reports_are_authenticated_with_token_reviews_unless_turned_off() -> None:
    """Default: the operator reviews the routers' tokens (and may: tokenreviews create, found
    in its code by test_rbac's scanner), and its routers carry a projected token. None, or
    reports off: no TokenReview permission, no token in the router pods."""
    assert ("authentication.k8s.io", "tokenreviews", "create") in required_access(
        operator_sources()
    )
    assert _token_reviews() == {("authentication.k8s.io", "tokenreviews", "create")}
    assert settings().report_auth == "TokenReview"
    (container,) = data_plane()[1]["containers"]
    assert "--report-token-file" in container["args"]

    off = "operator.reports.authentication=None"
    assert _token_reviews(off) == set()
    assert settings(off).report_auth == "None"
    (container,) = data_plane(off)[1]["containers"]
    assert "--report-token-file" not in container["args"]
    assert _token_reviews("operator.reports.enabled=false") == set()

    bad = run_helm(
        "template", "accordion", str(CHART), "--set", "operator.reports.authentication=Basic"
    )
    assert bad.returncode != 0
    assert "authentication" in bad.stderr
