"""The real operator deploys a planned pipeline as stage groups, wired and made before break.

Issue 19: when the plan serves a variant as a pipeline (its model cut into stages on different
pools, `accordion.solver.pipelines`), the operator runs one worker Deployment and Service per
stage, on that stage's pool, each worker configured to run its parts of the model and to hand
its output to the next stage's Service; the router's backend is the first stage, routed to only
once every stage is ready; and a change away from the pipeline moves the routing before the
stage groups go. Against kmock's emulator with `kopf run` (conftest.py); the manifests the
operator wrote are validated with kubernetes-validate (the emulator validates nothing).

The service: variant `big` takes 20 ms a request whole on the high-class pool (45 req/s per
device at the planner's 0.9 utilization) and 60 ms on the low-class pool (twice that misses the
100 ms SLO); cut into parts `a` and `b` it takes 10 + 10 ms on the high-class pool and 30 + 30 ms
on the low-class one. With one high-class device, 80 req/s are served only by a pipeline:
`a` on the high-class device (90 req/s) and `b` on three low-class ones (3 x 30 req/s).
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from accordion.workers.config import WorkerConfig

from .conftest import GROUP, VERSION, Cluster, Operator, request_log, wait_for

pytestmark = pytest.mark.timeout(180)

K8S_VERSION = "1.30.0"
NS, HI, LO = "pipe", "pipe-hi", "pipe-lo"
STAGE_LABEL = "accordion.dev/pipeline-stage"


def _profile(pool: str, ms: float) -> dict[str, Any]:
    return {"pool": pool, "batches": [{"batchSize": 1, "p50Ms": ms}]}


def _variant(with_stages: bool) -> dict[str, Any]:
    variant: dict[str, Any] = {
        "name": "big",
        "accuracy": 80,
        "model": {"storageUri": "/models/big.pt"},
        "profiles": [_profile(HI, 20), _profile(LO, 60)],
    }
    if with_stages:
        variant["stages"] = [
            {"name": "a", "outputBytes": 4096, "profiles": [_profile(HI, 10), _profile(LO, 30)]},
            {"name": "b", "outputBytes": 4000, "profiles": [_profile(HI, 10), _profile(LO, 30)]},
        ]
    return variant


def _service(qps: float) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": "svc", "namespace": NS},
        "spec": {
            "slo": {"latencyMs": 100},
            "demand": {
                "source": "Static",
                "qps": qps,
                "headroom": 0.0,
                "burst": {"policy": "Off"},
            },
            "variants": [_variant(with_stages=True)],
        },
    }


def _pool(name: str, devices: int, cost: float, selector: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DevicePool",
        "metadata": {"name": name},
        "spec": {
            "devices": devices,
            "costPerDevice": cost,
            "nodeSelector": {"example.com/class": selector},
            "resources": {"limits": {"nvidia.com/gpu": 1}},
        },
    }


def _workers(cluster: Cluster) -> list[dict[str, Any]]:
    return [
        d
        for d in cluster.deployments(NS)
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    ]


def _stages(cluster: Cluster, count: int | None = None) -> dict[int, dict[str, Any]]:
    """The pipeline's stage Deployments by stage index (none unless `count` of them)."""
    found = {
        int(d["metadata"]["labels"][STAGE_LABEL]): d
        for d in _workers(cluster)
        if STAGE_LABEL in d["metadata"]["labels"]
    }
    return found if count is None or len(found) == count else {}


def _config(deployment: dict[str, Any]) -> WorkerConfig:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    return WorkerConfig.model_validate_json(env["ACCORDION_WORKER_CONFIG"])


def _mark_ready(cluster: Cluster, deployment: dict[str, Any]) -> None:
    n = deployment["spec"]["replicas"]
    cluster.apps.patch_namespaced_deployment_status(
        deployment["metadata"]["name"],
        NS,
        {"status": {"replicas": n, "readyReplicas": n, "availableReplicas": n}},
    )


def _backends(cluster: Cluster) -> list[dict[str, Any]]:
    """The backends that carry traffic (pending ones do not until their check passes)."""
    table = cluster.routing(NS, "svc") or {"backends": []}
    return [b for b in table["backends"] if b["weight"] > 0 and not b.get("pending")]


def _valid(obj: dict[str, Any]) -> None:
    """Strictly valid for Kubernetes, as the operator wrote it (status left out)."""
    kubernetes_validate.validate(
        {k: v for k, v in obj.items() if k != "status"}, K8S_VERSION, strict=True
    )


def test_pipeline_stages_wired_and_replaced_make_before_break(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.custom.create_cluster_custom_object(
        GROUP, VERSION, "devicepools", _pool(HI, 1, 1.0, "high")
    )
    cluster.custom.create_cluster_custom_object(
        GROUP, VERSION, "devicepools", _pool(LO, 4, 0.1, "low")
    )
    cluster.create(_service(80.0))

    # One Deployment per stage, each on its own pool.
    try:
        # The first pass also waits for the operator to start (slow on a loaded machine).
        stages = wait_for(
            "two stage Deployments", lambda: _stages(cluster, count=2), timeout_s=90.0
        )
    except AssertionError:
        print(operator.log()[-6000:])
        raise
    assert len(_workers(cluster)) == 2, "a pipeline, no whole-variant worker"
    first, second = stages[0], stages[1]
    pools = {i: d["metadata"]["labels"]["accordion.dev/pool"] for i, d in stages.items()}
    pod0, pod1 = (d["spec"]["template"]["spec"] for d in (first, second))
    assert pod0["nodeSelector"] != pod1["nodeSelector"], "each stage on its own pool"
    replicas = {pools[i]: d["spec"]["replicas"] for i, d in stages.items()}
    assert replicas == {HI: 1, LO: 3}, "the fast stage on one device, the slow one on three"
    for i, d in stages.items():
        pod = d["spec"]["template"]["spec"]
        selector = "high" if pools[i] == HI else "low"
        assert pod["nodeSelector"] == {"example.com/class": selector}
        assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}

    # The wiring: stage 1 runs part a and hands on to stage 2's Service; stage 2 runs part b
    # and answers.
    c0, c1 = _config(first), _config(second)
    assert c0.pipeline is not None
    assert c1.pipeline is not None
    assert (c0.pipeline.first, c0.pipeline.last, c1.pipeline.first, c1.pipeline.last) == (
        "a",
        "a",
        "b",
        "b",
    )
    services = {s["metadata"]["name"]: s for s in cluster.services(NS)}
    name1 = second["metadata"]["name"]
    assert name1 in services
    assert first["metadata"]["name"] in services
    assert c0.pipeline.next_url == f"http://{name1}.{NS}.svc.cluster.local:8080/v2/models/big/infer"
    assert c1.pipeline.next_url is None
    assert c0.model_name == c1.model_name == "big"
    # Stage 1 leaves stage 2 its worst case (twice its batch latency) and the hand-over.
    assert c0.pipeline.downstream_ms == pytest.approx(2 * (30 if pools[1] == LO else 10), abs=1.0)
    assert c1.pipeline.downstream_ms == 0
    # Each worker predicts from its own part's profile on its own pool.
    assert set(c0.profile_ms.values()) == {10.0 if pools[0] == HI else 30.0}
    assert set(c1.profile_ms.values()) == {10.0 if pools[1] == HI else 30.0}
    for obj in [first, second, services[name1], services[first["metadata"]["name"]]]:
        _valid(obj)

    # No traffic while a stage is not ready: the first stage alone is not a pipeline.
    _mark_ready(cluster, first)
    wait_for(
        "status with the first stage ready",
        lambda: (
            (cluster.status(NS, "svc").get("plan") or [{}])[0]
            .get("stages", [{}])[0]
            .get("readyReplicas")
            == 1
        ),
    )
    assert _backends(cluster) == []
    _mark_ready(cluster, second)
    backends = wait_for("routing to the pipeline", lambda: _backends(cluster))
    (backend,) = backends
    assert backend["url"] == f"http://{first['metadata']['name']}.{NS}.svc.cluster.local:8080"
    assert backend["capacity_qps"] == pytest.approx(90.0)
    assert backend["model_name"] == "big"
    # One batch through both stages and the hand-over.
    assert backend["batch_latency_ms"] == pytest.approx(40.5, abs=0.1)
    # No per-size profile: a stage's answer comes after the whole pipeline, not its own pass.
    assert not backend.get("profile_ms")

    # Status shows the pipeline: its id, its stages, pools and replicas.
    wait_for("Ready", lambda: cluster.conditions(NS, "svc")["Ready"]["status"] == "True")
    (row,) = cluster.status(NS, "svc")["plan"]
    assert row["pipeline"]
    assert ">" in row["pipeline"]
    assert row["replicas"] == 1
    assert row["readyReplicas"] == 1
    assert [(s["pool"], s["first"], s["last"], s["replicas"]) for s in row["stages"]] == [
        (pools[0], "a", "a", replicas[pools[0]]),
        (pools[1], "b", "b", replicas[pools[1]]),
    ]
    assert all(s["readyReplicas"] == s["replicas"] for s in row["stages"])

    # Pipelines turned off (the variant's stages removed), a second high-class device and
    # less demand: one whole replica. Made before break: the stages serve until it is ready.
    cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, "devicepools", HI, {"spec": {"devices": 2}}
    )
    body = copy.deepcopy(_service(40.0))
    body["spec"]["variants"] = [_variant(with_stages=False)]
    cluster.patch(NS, "svc", {"spec": body["spec"]})
    whole = wait_for(
        "the whole-variant worker",
        lambda: [d for d in _workers(cluster) if STAGE_LABEL not in d["metadata"]["labels"]],
    )
    assert len(_stages(cluster)) == 2, "the stages run until the whole variant is ready"
    assert [b["url"] for b in _backends(cluster)] == [backend["url"]]
    # The whole variant is named as pending (a pipeline never is: see the first stage above).
    wait_for(
        "the whole variant pending",
        lambda: (
            [b["pending"] for b in (cluster.routing(NS, "svc") or {})["backends"] if "pending" in b]
            == [True]
        ),
    )
    _valid(whole[0])

    _mark_ready(cluster, whole[0])
    wait_for("the stage groups removed", lambda: not _stages(cluster))
    (after,) = _backends(cluster)
    assert after["url"] != backend["url"]
    assert after["name"] == f"big@{HI}"
    log = request_log(cluster)
    routing_patches = [
        i for i, (m, p) in enumerate(log) if m == "PATCH" and p.endswith("/svc-routing")
    ]
    stage_deletes = [
        i
        for i, (m, p) in enumerate(log)
        if m == "DELETE"
        and any(p.endswith(f"/deployments/{d['metadata']['name']}") for d in (first, second))
    ]
    assert len(stage_deletes) == 2, "both stage Deployments deleted"
    assert routing_patches
    assert routing_patches[-1] < min(stage_deletes), (
        "the routing moved to the whole variant before any stage went"
    )
    (row,) = wait_for(
        "status without the pipeline",
        lambda: [r for r in cluster.status(NS, "svc").get("plan") or [] if not r.get("stages")],
    )
    assert row["pool"] == HI
    assert row.get("pipeline") is None
