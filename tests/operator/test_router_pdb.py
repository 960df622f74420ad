"""The real operator gives every router a PodDisruptionBudget and removes it with the service.

Against the emulator (see conftest.py): the budget is created next to the router Deployment,
selects exactly the router's pods, is owned by the InferenceService, and is deleted when the
service is (the emulator collects no garbage, so this is the operator's own delete). An
operator restart finds it already there (409) and writes nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client as k8s

from .conftest import Cluster, Operator, isvc, wait_for


def budgets(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    policy: Any = k8s.PolicyV1Api(cluster.core.api_client)
    items = json.loads(
        policy.list_namespaced_pod_disruption_budget(ns, _preload_content=False).data
    )["items"]
    return [i for i in items if i["metadata"].get("namespace") == ns]


def test_router_budget_follows_the_service(cluster: Cluster, operator: Operator) -> None:
    ns, pool = "pdb", "pool-pdb"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 10.0))
    (pdb,) = wait_for("the router's PodDisruptionBudget", lambda: budgets(cluster, ns))
    router = next(d for d in cluster.deployments(ns) if d["metadata"]["name"] == "svc-router")
    assert pdb["metadata"]["name"] == "svc-router"
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = router["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert router["spec"]["replicas"] == 2
    owner = cluster.get(ns, "svc")["metadata"]["uid"]
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == owner

    cluster.delete(ns, "svc")
    wait_for("the budget removed with the service", lambda: not budgets(cluster, ns))
