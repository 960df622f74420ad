"""The real operator (`kopf run` subprocess) against kmock's Kubernetes emulator over HTTP.

The tests act as the user (create, patch and delete InferenceServices and DevicePools) and as
the kubelet (they mark worker Deployments ready by patching their status: the emulator runs
no controllers), and assert on the objects stored in the emulator. Each test uses its own
namespace and its own pool, so tests sharing the operator process do not plan for each other.

Gaps of the emulator and where they are covered instead (see conftest.py): schema validation
and CEL (test_crds.py validates specs against the CRD schema; the operator's own validation
gives InvalidSpec here), owner-reference garbage collection (the operator deletes owned
objects itself; ownerReferences are asserted here and validated in test_k8s_manifests.py),
server-side apply and strategic merge (the operator uses JSON merge patches only).
"""

from __future__ import annotations

import time

import pytest

from .conftest import Cluster, Operator, isvc, request_log, wait_for

pytestmark = pytest.mark.timeout(120)


def test_create_makes_workers_router_routing_and_status(cluster: Cluster) -> None:
    ns, pool = "create", "pool-create"
    cluster.create_pool(pool, 2)
    cluster.create(isvc("svc", ns, pool, 40.0))

    workers = wait_for("a worker Deployment", lambda: cluster.workers(ns))
    assert set(workers) == {"big"}
    big = workers["big"]
    # One replica serves the 40 req/s; the pool's other device holds a spare one for bursts
    # (spec.demand.burst defaults to Auto, 50%), in the same worker group.
    assert big["spec"]["replicas"] == 2
    labels = big["metadata"]["labels"]
    assert labels["accordion.dev/service"] == "svc"
    assert labels["accordion.dev/pool"] == pool
    assert labels["app.kubernetes.io/managed-by"] == "accordion-operator"
    owner = cluster.get(ns, "svc")["metadata"]["uid"]
    assert big["metadata"]["ownerReferences"][0]["uid"] == owner
    pod = big["spec"]["template"]["spec"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True

    names = wait_for("the router and worker Services", lambda: len(cluster.services(ns)) == 2)
    assert names
    assert "svc" in {x["metadata"]["name"] for x in cluster.services(ns)}
    assert any(d["metadata"]["name"] == "svc-router" for d in cluster.deployments(ns))
    wait_for("the routing ConfigMap", lambda: cluster.configmaps(ns))
    # No backend is ready yet: the table names big as pending, and nothing carries traffic.
    assert cluster.pending(ns, "svc") == {"big"}
    assert cluster.weights(ns, "svc") == {}
    conds = wait_for("status conditions", lambda: cluster.conditions(ns, "svc"))
    assert conds["Planned"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"

    cluster.mark_ready(ns)
    wait_for("routing to the ready worker", lambda: cluster.weights(ns, "svc") == {"big": 1.0})
    wait_for("Ready=True", lambda: cluster.conditions(ns, "svc")["Ready"]["status"] == "True")
    status = cluster.status(ns, "svc")
    assert status["observedGeneration"] == 1
    assert status["effectiveAccuracy"] == 80
    assert status["demandQps"] == 40
    assert status["plan"][0]["variant"] == "big"
    assert status["plan"][0]["spareReplicas"] == 1
    assert status["spareCapacityQps"] > 0
    assert status["plan"][0]["readyReplicas"] == 2
    assert any(e["reason"] == "ReplicasChanged" for e in cluster.events(ns))


def test_demand_change_switches_variant_make_before_break(cluster: Cluster) -> None:
    ns, pool = "switch", "pool-switch"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 40.0))
    wait_for("the big worker", lambda: "big" in cluster.workers(ns))
    cluster.mark_ready(ns)
    wait_for("routing to big", lambda: cluster.weights(ns, "svc") == {"big": 1.0})

    # 150 req/s: one device of big serves 45; small serves 180.
    cluster.patch(ns, "svc", {"spec": {"demand": {"qps": 150.0}}})
    wait_for("the small worker", lambda: "small" in cluster.workers(ns))
    assert "big" in cluster.workers(ns), "the old variant runs until the new one is ready"
    wait_for("small named as pending", lambda: cluster.pending(ns, "svc") == {"small"})
    assert cluster.weights(ns, "svc") == {"big": 1.0}, "no traffic to replicas that are not ready"
    wait_for(
        "status for the new plan", lambda: cluster.status(ns, "svc").get("effectiveAccuracy") == 70
    )
    assert cluster.conditions(ns, "svc")["Ready"]["status"] == "False"

    cluster.mark_ready(ns, "small")
    wait_for("the big worker removed", lambda: set(cluster.workers(ns)) == {"small"})
    assert cluster.weights(ns, "svc") == {"small": 1.0}
    wait_for("Ready", lambda: cluster.conditions(ns, "svc")["Ready"]["status"] == "True")
    # Make before break: traffic moved (routing ConfigMap patched) before big was deleted.
    log = request_log(cluster)
    routing_patches = [
        i for i, (m, p) in enumerate(log) if m == "PATCH" and p.endswith("/svc-routing")
    ]
    deletes = [
        i
        for i, (m, p) in enumerate(log)
        if m == "DELETE" and f"/namespaces/{ns}/deployments/svc-big-" in p
    ]
    assert deletes, "the big worker Deployment was deleted"
    assert routing_patches[-1] < deletes[0]
    reasons = {e["reason"] for e in cluster.events(ns)}
    assert "AccuracyScaledDown" in reasons


def switch_big_to_small(cluster: Cluster, ns: str, pool: str) -> str:
    """One device: big serves 40 req/s and is ready; then 150 req/s, which only small serves,
    and small is ready. Returns big's Deployment name (the plan removes it next)."""
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 40.0))
    wait_for("the big worker", lambda: "big" in cluster.workers(ns), timeout_s=60)
    big = str(cluster.workers(ns)["big"]["metadata"]["name"])
    cluster.mark_ready(ns)
    wait_for("routing to big", lambda: cluster.weights(ns, "svc") == {"big": 1.0})
    cluster.patch(ns, "svc", {"spec": {"demand": {"qps": 150.0}}})
    wait_for("the small worker", lambda: "small" in cluster.workers(ns))
    cluster.mark_ready(ns, "small")
    return big


def test_a_removed_worker_groups_service_stays_while_its_pods_drain(
    cluster: Cluster, operator: Operator
) -> None:
    """A removed worker group's pods drain (`workerDrainSeconds`, 5 s by default) and routers
    whose loaded table still names it reach them only through its Service: the Deployment goes
    at once, the Service when the drain is over: the operator wakes for it (here its periodic
    pass is a minute away). A worker Service left without a Deployment by an operator that
    stopped is deleted too."""
    with operator.configured(ACCORDION_RESYNC_INTERVAL_S="60"):
        _service_outlives_its_group(cluster)


def _service_outlives_its_group(cluster: Cluster) -> None:
    ns, pool = "svcdrain", "pool-svcdrain"
    big = switch_big_to_small(cluster, ns, pool)

    def services() -> set[str]:
        return {x["metadata"]["name"] for x in cluster.services(ns)}

    wait_for("the big worker removed", lambda: "big" not in cluster.workers(ns))
    removed = time.monotonic()
    assert big in services(), "the Service of a draining group stays"
    wait_for("its Service deleted after the drain", lambda: big not in services(), timeout_s=15)
    assert time.monotonic() - removed >= 3.5, "deleted before its pods' 5-s drain was over"

    orphan = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "svc-orphan",
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/component": "worker",
                "app.kubernetes.io/managed-by": "accordion-operator",
            },
        },
        "spec": {"ports": [{"port": 8080}]},
    }
    cluster.core.create_namespaced_service(ns, orphan)
    cluster.patch(ns, "svc", {"spec": {"demand": {"qps": 151.0}}})  # a pass
    wait_for("the orphaned worker Service deleted", lambda: "svc-orphan" not in services())
    assert any(n.startswith("svc-small-") for n in services()), "a live group's Service stays"


def test_without_reports_the_drain_waits_for_the_table_files_sync(
    cluster: Cluster, operator: Operator
) -> None:
    """Routers that do not report read their table from the mounted ConfigMap, which the
    kubelet syncs up to a minute or more after the write: the old worker stays that long
    (`routing_file_sync_s`, here 3 s; the other tests here run with 0 and no routers). The
    drain counts from when the table is in place, so it must not be 0 (the other tests' value:
    then the old worker goes in the pass that writes the table)."""
    ns, pool = "filesync", "pool-filesync"
    with operator.configured(ACCORDION_ROUTING_FILE_SYNC_S="3", ACCORDION_DRAIN_S="0.5"):
        switch_big_to_small(cluster, ns, pool)
        wait_for("routing to small", lambda: cluster.weights(ns, "svc") == {"small": 1.0})
        written = time.monotonic()
        wait_for("the big worker removed", lambda: set(cluster.workers(ns)) == {"small"})
        assert time.monotonic() - written >= 2.5, "removed before the routers' file could sync"


def test_pool_shrink_replans(cluster: Cluster) -> None:
    ns, pool = "shrink", "pool-shrink"
    cluster.create_pool(pool, 4)
    cluster.create(isvc("svc", ns, pool, 120.0))
    wait_for(
        "three big replicas",
        lambda: cluster.workers(ns).get("big", {}).get("spec", {}).get("replicas") == 3,
    )
    cluster.mark_ready(ns)
    cluster.patch_pool(pool, 1)
    wait_for("the small worker", lambda: "small" in cluster.workers(ns))
    cluster.mark_ready(ns, "small")
    wait_for("only small remains", lambda: set(cluster.workers(ns)) == {"small"})
    assert cluster.workers(ns)["small"]["spec"]["replicas"] == 1


def test_delete_removes_everything_owned(cluster: Cluster) -> None:
    ns, pool = "delete", "pool-delete"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 10.0))
    wait_for("the worker", lambda: cluster.workers(ns))
    wait_for("the routing ConfigMap", lambda: cluster.configmaps(ns))
    cluster.delete(ns, "svc")
    wait_for(
        "everything gone",
        lambda: (
            not cluster.deployments(ns) and not cluster.services(ns) and not cluster.configmaps(ns)
        ),
    )


def test_invalid_spec_is_isolated(cluster: Cluster) -> None:
    ns, pool = "invalid", "pool-invalid"
    cluster.create_pool(pool, 2)
    bad = isvc("bad", ns, pool, 10.0)
    bad["spec"]["variants"][0]["accuracy"] = 150  # the CRD schema would reject it; no emulator
    cluster.create(bad)
    cluster.create(isvc("good", ns, pool, 10.0))
    conds = wait_for("InvalidSpec on bad", lambda: cluster.conditions(ns, "bad"))
    assert conds["InvalidSpec"]["status"] == "True"
    assert "spec.variants[0].accuracy" in conds["InvalidSpec"]["message"]
    wait_for("good is served", lambda: cluster.workers(ns))
    assert {d["metadata"]["labels"]["accordion.dev/service"] for d in cluster.deployments(ns)} == {
        "good"
    }
    # Fixing the spec brings it in.
    cluster.patch(
        ns, "bad", {"spec": {"variants": isvc("bad", ns, pool, 10.0)["spec"]["variants"]}}
    )
    wait_for(
        "bad is planned",
        lambda: cluster.conditions(ns, "bad").get("InvalidSpec", {}).get("status") == "False",
    )


def test_api_errors_are_retried(cluster: Cluster) -> None:
    ns, pool = "faults", "pool-faults"
    emu = cluster.emulator
    emu.call(lambda e: e.inject("POST", "deployments", 500, times=2))
    emu.call(lambda e: e.inject("PATCH", "inferenceservices", 409, times=1))
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 10.0))
    wait_for("the worker despite 500s", lambda: cluster.workers(ns))
    wait_for("the status despite a 409", lambda: cluster.conditions(ns, "svc"))
    served = emu.call(lambda e: list(e.faults_served))
    assert ("POST", "deployments", 500) in served
    assert ("PATCH", "inferenceservices", 409) in served


def settled_service(cluster: Cluster, ns: str, pool: str) -> None:
    """One service `svc` at 40 req/s on a 2-device pool, its workers ready and it Ready."""
    cluster.create_pool(pool, 2)
    cluster.create(isvc("svc", ns, pool, 40.0))
    wait_for("the worker", lambda: cluster.workers(ns))
    cluster.mark_ready(ns)
    wait_for(
        "Ready", lambda: cluster.conditions(ns, "svc").get("Ready", {}).get("status") == "True"
    )


def test_restart_makes_no_changes(cluster: Cluster, operator: Operator) -> None:
    ns, pool = "restart", "pool-restart"
    settled_service(cluster, ns, pool)
    before = cluster.versions(ns)
    operator.stop()
    operator.start()
    # A canary proves the restarted operator has reconciled the whole cluster (one global pass).
    cluster.create_pool("pool-canary", 1)
    cluster.create(isvc("canary", "canary", "pool-canary", 10.0))
    wait_for("the canary's worker", lambda: cluster.workers("canary"), timeout_s=60)
    assert cluster.versions(ns) == before


def test_an_upgraded_operator_brings_routers_to_its_settings(
    cluster: Cluster, operator: Operator
) -> None:
    """A new router image (an operator upgrade) reaches the routers of services whose plan does
    not change; their workers are left as they are."""
    ns, pool = "upgrade", "pool-upgrade"
    settled_service(cluster, ns, pool)
    # Steady: the plan and routing stay as they are across the restart (as in the test above),
    # so nothing but the new settings can rewrite the router.

    def router_image() -> str:
        (router,) = [
            d
            for d in cluster.deployments(ns)
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "router"
        ]
        return str(router["spec"]["template"]["spec"]["containers"][0]["image"])

    wait_for("the router", lambda: bool(router_image()))
    old = router_image()
    workers = {n: d["metadata"]["resourceVersion"] for n, d in cluster.workers(ns).items()}
    with operator.configured(ACCORDION_ROUTER_IMAGE="registry.example/accordion-worker:9.9.9"):
        wait_for(
            "the new router image",
            lambda: router_image() == "registry.example/accordion-worker:9.9.9",
            timeout_s=60,
        )
        assert old != router_image()
        assert {
            n: d["metadata"]["resourceVersion"] for n, d in cluster.workers(ns).items()
        } == workers


def test_the_log_tells_the_passes_not_every_watch_event(
    cluster: Cluster, operator: Operator
) -> None:
    ns, pool = "quiet", "pool-quiet"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 10.0))
    wait_for("the worker", lambda: cluster.workers(ns))
    wait_for("a pass in the log", lambda: "planned " in operator.log())
    assert "Handler 'on_service' succeeded" not in operator.log()
    assert "Handler 'on_deployment' succeeded" not in operator.log()


def test_a_worker_that_cannot_load_its_model_is_told_in_status(cluster: Cluster) -> None:
    """The kubelet reports the worker's exit (status 65: the model cannot be loaded) and its
    last log line; the operator watches its worker pods and says so on the service."""
    from accordion.operator.control.desired import WorkerKey
    from accordion.operator.k8s import worker_labels
    from accordion.workers.config import MODEL_LOAD_FAILED_EXIT

    ns, pool = "badmodel", "pool-badmodel"
    cluster.create_pool(pool, 1)
    cluster.create(isvc("svc", ns, pool, 40.0))
    wait_for("a worker Deployment", lambda: cluster.workers(ns))
    key = WorkerKey(service=f"{ns}/svc", variant="big", pool=pool)
    terminated = {
        "exitCode": MODEL_LOAD_FAILED_EXIT,
        "message": "accordion-worker: cannot load /models/big.pt: not a TorchScript archive",
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "svc-big-x1", "namespace": ns, "labels": worker_labels(key)},
        "spec": {"containers": [{"name": "worker", "image": "accordion-worker"}]},
        "status": {
            "containerStatuses": [
                {
                    "name": "worker",
                    "image": "accordion-worker",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": terminated},
                }
            ]
        },
    }
    cluster.core.create_namespaced_pod(ns, pod)
    conds = wait_for(
        "ModelsLoaded=False",
        lambda: (
            (c := cluster.conditions(ns, "svc")).get("ModelsLoaded", {}).get("status") == "False"
            and c
        ),
    )
    assert conds["ModelsLoaded"]["reason"] == "ModelLoadFailed"
    assert "not a TorchScript archive" in conds["ModelsLoaded"]["message"]
    assert any(e["reason"] == "ModelLoadFailed" for e in cluster.events(ns))
