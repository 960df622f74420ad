"""The chart lints, renders with defaults and with every toggle, and every manifest is valid.

Kubernetes kinds are validated with kubernetes-validate (strict: unknown fields are errors)
against 1.30, the oldest version the chart supports, and the newest schemas it ships. The
Prometheus Operator kinds, which it does not know, are checked against the fields of their
CRDs that the chart uses (strict as well).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .conftest import ALL_TOGGLES, CHART, by_kind, objects, run_helm

VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CONFIGURATIONS = {
    "defaults": (),
    "all-toggles": ALL_TOGGLES,
    "standalone": ("operator.peering.enabled=false", "prometheus.url="),
}

_STR = {"type": "string"}
_STRMAP = {"type": "object", "additionalProperties": _STR}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": _STR},
        "separator": _STR,
        "targetLabel": _STR,
        "regex": _STR,
        "replacement": _STR,
        "action": _STR,
    },
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {
        "port": _STR,
        "path": _STR,
        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$"},
        "scrapeTimeout": {"type": "string", "pattern": "^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?$"},
        "honorLabels": {"type": "boolean"},
        "relabelings": {"type": "array", "items": _RELABEL},
    },
}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRMAP, "matchExpressions": {"type": "array"}},
}
_NS_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}},
}


def _crd_kind(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": _STR,
            "metadata": {
                "type": "object",
                "required": ["name", "namespace"],
                "properties": {"name": _STR, "namespace": _STR, "labels": _STRMAP},
            },
            "spec": spec,
        },
    }


# The fields of the Prometheus Operator CRDs (monitoring.coreos.com/v1) the chart uses.
MONITORING_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _crd_kind(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": _STR,
                "selector": _SELECTOR,
                "namespaceSelector": _NS_SELECTOR,
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    "PodMonitor": _crd_kind(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": _STR,
                "selector": _SELECTOR,
                "namespaceSelector": _NS_SELECTOR,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    "PrometheusRule": _crd_kind(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": _STR,
                            "interval": _STR,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                    "properties": {
                                        "record": _STR,
                                        "alert": _STR,
                                        "expr": _STR,
                                        "for": _STR,
                                        "labels": _STRMAP,
                                        "annotations": _STRMAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        }
    ),
}


def test_lint_strict() -> None:
    proc = run_helm("lint", "--strict", str(CHART))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_lint_strict_with_every_toggle() -> None:
    sets = [a for s in ALL_TOGGLES for a in ("--set", s)]
    proc = run_helm("lint", "--strict", str(CHART), *sets)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("config", sorted(CONFIGURATIONS))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid(config: str, version: str) -> None:
    objs = objects(*CONFIGURATIONS[config], include_crds=True)
    assert objs
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.validate(obj, MONITORING_SCHEMAS[obj["kind"]])
        elif obj["apiVersion"].startswith("kopf.dev/"):
            assert set(obj) == {"apiVersion", "kind", "metadata"}, where
        else:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc}")


def test_defaults_render_no_monitoring_objects() -> None:
    kinds = {o["kind"] for o in objects()}
    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "ClusterKopfPeering",
    }


def test_every_toggle_renders_its_objects() -> None:
    objs = objects(*ALL_TOGGLES)
    assert len(by_kind(objs, "ServiceMonitor")) == 1
    assert {o["metadata"]["name"] for o in by_kind(objs, "PodMonitor")} == {
        "accordion-routers",
        "accordion-workers",
    }
    assert len(by_kind(objs, "PrometheusRule")) == 1
    dashboards = [
        o
        for o in by_kind(objs, "ConfigMap")
        if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) >= 2


def test_operator_pod_is_locked_down() -> None:
    (deployment,) = by_kind(objects(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Every healthy replica is Ready: a Deployment of several operators becomes Available.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"]
    # kopf peering: one active replica; Recreate avoids two operators during an upgrade.
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--peering=accordion" in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def _operator_config(*sets: str) -> Any:
    """The operator's settings file as the chart renders it with `sets`, validated as the
    operator reads it (unknown keys rejected)."""
    config_module = pytest.importorskip("accordion.operator.config")
    (config,) = [
        o for o in by_kind(objects(*sets), "ConfigMap") if o["metadata"]["name"].endswith("-config")
    ]
    return config_module.OperatorConfig.model_validate(
        yaml.safe_load(config["data"]["config.yaml"])
    )


def test_operator_config_is_what_the_operator_reads() -> None:
    """The settings file validates as the operator's OperatorConfig (unknown keys rejected)."""
    config_module = pytest.importorskip("accordion.operator.config")
    parsed = _operator_config()
    assert parsed.worker_image == "ghcr.io/accordion-dev/accordion-worker:0.1.0"
    assert parsed.prometheus_url == "http://prometheus-operated.monitoring.svc:9090"
    # The chart's default demand query is the operator's.
    assert parsed.demand_query == config_module.DEFAULT_DEMAND_QUERY
    (deployment,) = by_kind(objects(), "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ACCORDION_OPERATOR_CONFIG"]["value"] == "/etc/accordion/config.yaml"


def test_the_chart_installs_the_loops_default_timings() -> None:
    """Installed with its defaults, the operator runs the timings the simulator and local mode
    measure (`DEFAULT_TIMINGS`: half-lives, passes, debounce, drain), not values of the chart's
    own; each is still a value to set."""
    config_module = pytest.importorskip("accordion.operator.config")
    defaults = config_module.OperatorConfig()
    installed = _operator_config()
    assert installed.timings() == defaults.timings()
    assert installed.planner == defaults.planner
    assert installed.routing_file_sync_s == defaults.routing_file_sync_s
    assert installed.router_drain_s == defaults.router_drain_s
    assert installed.worker_drain_s == defaults.worker_drain_s
    tuned = _operator_config(
        "operator.demand.riseHalfLifeSeconds=4", "operator.demand.fallHalfLifeSeconds=60"
    )
    assert (tuned.demand_rise_half_life_s, tuned.demand_fall_half_life_s) == (4.0, 60.0)


def test_without_prometheus_the_operator_gets_no_url() -> None:
    assert _operator_config("prometheus.url=").prometheus_url is None


def test_alert_labels_and_runbooks_are_added() -> None:
    objs = objects(
        "prometheusRule.enabled=true",
        "prometheusRule.alertLabels.team=ml",
        "prometheusRule.runbookBaseUrl=https://runbooks.example/accordion",
    )
    (rule,) = by_kind(objs, "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert["labels"]["team"] == "ml"
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert alert["annotations"]["runbook_url"].startswith("https://runbooks.example/")


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("operator.logLevel=debug",),
        ("operator.logLevel=warning", "operator.peering.enabled=false"),
    ],
    ids=["defaults", "debug", "quiet-standalone"],
)
def test_operator_command_line_is_valid_for_kopf(sets: tuple[str, ...]) -> None:
    """The rendered command line parses with kopf's own `kopf run` CLI, and its module exists."""
    cli = pytest.importorskip("kopf.cli")
    import importlib.util

    (deployment,) = by_kind(objects(*sets), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command, args = container["command"], container["args"]
    assert command[:2] == ["kopf", "run"]
    ctx = cli.run.make_context("run", [*command[2:], *args])
    params = ctx.params
    assert params["clusterwide"] is True
    for module in params["modules"]:
        assert importlib.util.find_spec(module) is not None, module
    port = container["ports"][1]["containerPort"]
    assert params["liveness_endpoint"] == f"http://0.0.0.0:{port}/healthz"
    if "operator.peering.enabled=false" in sets:
        assert params["standalone"] is True
    else:
        assert params["peering_name"] == "accordion"
    assert params["debug"] is ("operator.logLevel=debug" in sets)


def test_rendered_rules_and_dashboards_are_the_generated_ones() -> None:
    """What the chart installs is what accordion.observability generates (no template mangling)."""
    import json

    generated_rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    objs = objects("prometheusRule.enabled=true", "grafanaDashboards.enabled=true")
    (rule,) = by_kind(objs, "PrometheusRule")
    assert rule["spec"] == generated_rules
    boards = {
        key: json.loads(text)
        for o in by_kind(objs, "ConfigMap")
        if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
        for key, text in o["data"].items()
    }
    assert boards == {
        p.name: json.loads(p.read_text()) for p in (CHART / "files" / "dashboards").glob("*.json")
    }
