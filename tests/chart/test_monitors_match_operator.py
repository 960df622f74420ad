"""The PodMonitors select and label the pods the operator actually creates.

Builds a worker and a router Deployment with the operator's own builders
(`accordion.operator.k8s`) and checks them against the rendered PodMonitors: the selector
matches the pod labels, every pod label the relabelings read exists, and the scraped port is a
named container port. Without this, a renamed label would silently empty every dashboard.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import by_kind, objects


def _meta_name(label: str) -> str:
    """Prometheus' service-discovery name of a pod label."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _operator_pods() -> dict[str, dict[str, Any]]:
    k8s = pytest.importorskip("accordion.operator.k8s")
    config_module = pytest.importorskip("accordion.operator.config")
    desired = pytest.importorskip("accordion.operator.control.desired")
    config = config_module.OperatorConfig()
    key = desired.WorkerKey(service="team-a/classifier", variant="resnet50", pool="gpu-a100")
    spec = desired.WorkerSpec(
        key=key,
        replicas=2,
        max_batch_size=8,
        capacity_qps_per_replica=100.0,
        accuracy=76.1,
        slo_ms=100.0,
        model_uri="/models/resnet50.pt",
    )
    worker = k8s.worker_deployment(spec, "uid-1", config)
    router = k8s.router_deployment("team-a/classifier", "uid-1", config)
    return {"worker": worker["spec"]["template"], "router": router["spec"]["template"]}


@pytest.mark.parametrize("component", ["router", "worker"])
def test_pod_monitor_matches_the_operators_pods(component: str) -> None:
    pod = _operator_pods()[component]
    labels: dict[str, str] = pod["metadata"]["labels"]
    monitors = {
        m["metadata"]["name"]: m for m in by_kind(objects("podMonitor.enabled=true"), "PodMonitor")
    }
    monitor = monitors[f"accordion-{component}s"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), (selector, labels)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports
    available = {_meta_name(k) for k in labels} | {
        "__meta_kubernetes_pod_name",
        "__meta_kubernetes_namespace",
    }
    for relabel in endpoint["relabelings"]:
        for source in relabel["sourceLabels"]:
            assert source in available, (
                f"{source} is not a label of the operator's {component} pods"
            )
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    expected = {"service", "pod"} | ({"variant", "pool"} if component == "worker" else set())
    assert targets == expected


def test_pod_label_values_are_what_the_dashboards_select() -> None:
    """service = the InferenceService's name, variant and pool as in the spec."""
    worker = _operator_pods()["worker"]["metadata"]["labels"]
    assert worker["accordion.dev/service"] == "classifier"
    assert worker["accordion.dev/variant"] == "resnet50"
    assert worker["accordion.dev/pool"] == "gpu-a100"
