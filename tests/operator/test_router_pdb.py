"""The real operator gives every router, and every service's workers, a PodDisruptionBudget and
removes them with the service.

Against the emulator (see conftest.py): the budgets are created next to the router Deployment,
select exactly the router's pods and the service's worker pods, are owned by the
InferenceService, and are deleted when the service is (the emulator collects no garbage, so
this is the operator's own delete). A restarted operator lists the budgets rather than
creating each again.
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
    found = wait_for(
        "the PodDisruptionBudgets", lambda: v if len(v := budgets(cluster, ns)) == 2 else None
    )
    pdb, workers = sorted(found, key=lambda b: b["metadata"]["name"])
    router = next(d for d in cluster.deployments(ns) if d["metadata"]["name"] == "svc-router")
    assert pdb["metadata"]["name"] == "svc-router"
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = router["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert router["spec"]["replicas"] == 2
    owner = cluster.get(ns, "svc")["metadata"]["uid"]
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == owner
    # The workers' budget selects the service's worker pods, not the router's.
    assert workers["metadata"]["name"] == "svc-workers"
    assert workers["metadata"]["ownerReferences"][0]["uid"] == owner
    selector = workers["spec"]["selector"]["matchLabels"].items()
    assert not selector <= labels.items()
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in cluster.deployments(ns)]
    assert sum(selector <= p.items() for p in pods) == len(pods) - 1 >= 1

    cluster.delete(ns, "svc")
    wait_for("the budgets removed with the service", lambda: not budgets(cluster, ns))


def test_a_restarted_operator_lists_the_budgets_instead_of_creating_them(
    cluster: Cluster, operator: Operator
) -> None:
    """The budgets are not watched: a restarted operator lists them once, at the first routing
    it applies, instead of POSTing every service's again (a 409 each, one write per service)."""
    ns, pool = "pdb-restart", "pool-pdb-restart"
    cluster.create_pool(pool, 2)
    cluster.create(isvc("svc", ns, pool, 10.0))
    wait_for("the PodDisruptionBudgets", lambda: len(budgets(cluster, ns)) == 2)
    operator.stop()
    emulator = cluster.emulator.emulator
    assert emulator is not None
    since = len(emulator.log)
    operator.start()
    # A new plan for this service (more demand, another worker): its routing is applied, the
    # router's objects with it.
    cluster.patch(ns, "svc", {"spec": {"demand": {"qps": 150.0}}})
    listed = ("GET", "/apis/policy/v1/poddisruptionbudgets")

    def posted() -> list[tuple[str, str]]:
        return [
            e for e in emulator.log[since:] if e[0] == "POST" and "poddisruptionbudgets" in e[1]
        ]

    def applied() -> bool:
        cluster.mark_ready(ns)  # the new routing waits for the new replica
        return listed in emulator.log[since:] or bool(posted())

    wait_for("the routing applied", applied, timeout_s=60)
    assert listed in emulator.log[since:]
    assert posted() == []
