"""The chart's secured-Prometheus values reach the operator: token and CA files it can read.

Every file path the chart writes into the operator's settings must be a file in the operator
pod: a path given as is, or a key of a Secret / ConfigMap the chart mounts (whole volume, not
subPath, so that the kubelet's updates reach it and the operator reads the new token).
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from accordion.operator.config import OperatorConfig

from .conftest import CHART, by_kind, objects, run_helm

SECURED = (
    "prometheus.url=https://thanos-querier.openshift-monitoring.svc:9091",
    "prometheus.auth.bearerTokenSecret.name=thanos-token",
    "prometheus.tls.caConfigMap.name=openshift-service-ca.crt",
    "prometheus.tls.caConfigMap.key=service-ca.crt",
    "prometheus.tls.clientCertSecret=accordion-client",
    "prometheus.maxQueriesPerNamespace=3",
)


def _config(*sets: str) -> OperatorConfig:
    (cm,) = [
        o for o in by_kind(objects(*sets), "ConfigMap") if o["metadata"]["name"].endswith("-config")
    ]
    return OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


def _mounted_files(*sets: str) -> dict[str, tuple[str, str, str]]:
    """Path in the pod -> (volume kind, object name, key) of every mounted Secret/ConfigMap key."""
    (deployment,) = by_kind(objects(*sets), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    out: dict[str, tuple[str, str, str]] = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        assert "subPath" not in mount, "a subPath mount never sees updates"
        volume: dict[str, Any] = volumes[mount["name"]]
        for kind, name_key in (("secret", "secretName"), ("configMap", "name")):
            if kind in volume:
                source = volume[kind]
                items = source.get("items") or [
                    {"key": k, "path": k} for k in ("tls.crt", "tls.key", "ca.crt")
                ]
                for item in items:
                    path = str(PurePosixPath(mount["mountPath"]) / item["path"])
                    out[path] = (kind, source[name_key], item["key"])
    return out


def test_defaults_send_no_token_and_use_the_system_cas() -> None:
    config = _config()
    assert config.prometheus_bearer_token_file is None
    assert config.prometheus_ca_file is None
    assert config.prometheus_insecure_skip_verify is False
    assert config.demand_max_queries_per_namespace == 2


def test_secret_and_configmap_are_mounted_where_the_operator_reads_them() -> None:
    config = _config(*SECURED)
    files = _mounted_files(*SECURED)
    assert config.prometheus_bearer_token_file is not None
    assert files[config.prometheus_bearer_token_file] == ("secret", "thanos-token", "token")
    assert config.prometheus_ca_file is not None
    assert files[config.prometheus_ca_file] == (
        "configMap",
        "openshift-service-ca.crt",
        "service-ca.crt",
    )
    assert config.prometheus_cert_file in files
    assert config.prometheus_key_file in files
    assert config.demand_max_queries_per_namespace == 3
    (deployment,) = by_kind(objects(*SECURED), "Deployment")
    kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_paths_given_as_is_are_passed_through() -> None:
    sets = (
        "prometheus.auth.bearerTokenFile=/var/run/secrets/kubernetes.io/serviceaccount/token",
        "prometheus.tls.caFile=/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt",
        "prometheus.tls.insecureSkipVerify=true",
    )
    config = _config(*sets)
    assert config.prometheus_bearer_token_file == (
        "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )
    assert config.prometheus_ca_file == (
        "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt"
    )
    assert config.prometheus_insecure_skip_verify is True


@pytest.mark.parametrize(
    "bad",
    [
        "prometheus.auth.bearerTokenFile=relative/token",
        "prometheus.tls.caConfigMap.name=Bad_Name",
        "prometheus.maxQueriesPerNamespace=0",
    ],
)
def test_the_values_schema_rejects_bad_settings(bad: str) -> None:
    proc = run_helm("template", "a", str(CHART), "--set", bad)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
