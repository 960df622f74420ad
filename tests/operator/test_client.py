"""The operator's Kubernetes client: sized for the actuator's concurrent writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.config import kube_config

from accordion.operator.handlers import API_THREADS_BESIDE_WRITES, Driver, make_api_client


def test_connection_pool_covers_every_api_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    # The client reads KUBECONFIG when it is imported (as the operator's process has it set).
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a cluster
    # load_kube_config replaces the process-wide default configuration: restore it after.
    monkeypatch.setattr(k8s.Configuration, "_default", k8s.Configuration._default)
    threads = Driver.concurrency + API_THREADS_BESIDE_WRITES
    client = make_api_client(threads)
    assert client.configuration.host == "http://127.0.0.1:9"
    assert client.configuration.connection_pool_maxsize >= threads
    assert client.rest_client.pool_manager.connection_pool_kw["maxsize"] >= threads
    # ... and never below the client's own default on a machine with many CPUs.
    assert make_api_client(1).configuration.connection_pool_maxsize == max(
        k8s.Configuration().connection_pool_maxsize, 1
    )
