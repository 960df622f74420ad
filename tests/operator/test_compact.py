"""The driver's compact copies of watched objects keep everything the operator reads.

`compact.compact` interns strings, drops managedFields and keeps of a Node only what the pools
read; `compact.ListPage` reads a list response one item at a time. These tests check that the
loop's and the actuator's view of a compacted object is the raw object's: the pool capacity and
the wake-up filter of a Node, the actuator's diff of every manifest the operator writes, and
the worker and routing state read back from them. Each field the operator reads is also
changed in turn on the raw Node, and the change must show through the compact copy. Last, the
driver's first listing waits for kopf's initial listing to be over (the start-up memory peak).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from typing import Any

import pytest

from accordion.operator.actuator import ObjectCache, _differs
from accordion.operator.api import DevicePool
from accordion.operator.compact import ListPage, compact, node_essentials
from accordion.operator.config import OperatorConfig
from accordion.operator.handlers import node_significant
from accordion.operator.k8s import (
    Manifest,
    observe_routing,
    observe_worker,
)
from accordion.operator.mig import pod_profile
from accordion.operator.pools import pool_capacity

from .example_manifests import example_manifests

GPU = "nvidia.com/gpu"
MANAGED_FIELDS = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:conditions": {}}},
    }
]


def real_node(name: str = "gpu-1", **changes: Any) -> dict[str, Any]:
    """A Node as an API server serves it: heartbeats, images, managedFields, node info."""
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": "u-1",
            "resourceVersion": "42",
            "labels": {"gpu": "a100", "kubernetes.io/hostname": name},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            "managedFields": MANAGED_FIELDS,
        },
        "spec": {"podCIDR": "10.0.0.0/24", "providerID": f"gce://p/z/{name}"},
        "status": {
            "allocatable": {"cpu": "96", "memory": "1300Gi", GPU: "8"},
            "capacity": {"cpu": "96", "memory": "1300Gi", GPU: "8"},
            "conditions": [
                {
                    "type": kind,
                    "status": "True" if kind == "Ready" else "False",
                    "lastHeartbeatTime": "2025-01-01T00:00:00Z",
                    "lastTransitionTime": "2025-01-01T00:00:00Z",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
                for kind in ("MemoryPressure", "DiskPressure", "Ready")
            ],
            "images": [{"names": [f"registry/model-{i}:v1"], "sizeBytes": i} for i in range(30)],
            "nodeInfo": {"kubeletVersion": "v1.30.0", "osImage": "COS"},
        },
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = node
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return node


def gpu_pool(selector: dict[str, str] | None = None) -> DevicePool:
    return DevicePool.model_validate(
        {
            "metadata": {"name": "a100", "generation": 1},
            "spec": {
                "devices": 20,
                "nodeSelector": {"gpu": "a100"} if selector is None else selector,
                "resources": {"limits": {GPU: 1}},
            },
        }
    )


def seen_by_operator(node: dict[str, Any]) -> Any:
    """Everything the operator derives from one Node."""
    cap = pool_capacity(gpu_pool(), [node])
    return (cap, node_significant(node), node.get("spec", {}).get("taints"))


def test_a_compact_node_is_what_the_operator_reads_of_it() -> None:
    raw = real_node()
    slim = compact("Node", raw)
    assert seen_by_operator(slim) == seen_by_operator(raw)
    assert pool_capacity(gpu_pool(), [slim]).available == 8
    assert "images" not in slim["status"]
    assert "managedFields" not in slim["metadata"]
    assert slim["metadata"]["resourceVersion"] == "42"
    assert len(json.dumps(slim)) < len(json.dumps(raw)) / 3


# Every field of a Node that pools.pool_capacity or handlers.node_significant reads: a change
# to it must show in what the operator derives from the compact copy (a field the compaction
# dropped would hide the change and fail here).
NODE_CHANGES: list[dict[str, Any]] = [
    {"metadata__labels": {"gpu": "h100"}},
    {"spec__unschedulable": True},
    {"spec__taints": [{"key": "gpu", "effect": "NoSchedule"}]},
    {"status__allocatable": {GPU: "2"}},
    {"status__conditions": [{"type": "Ready", "status": "False"}]},
    {"metadata__deletionTimestamp": "2025-01-02T00:00:00Z"},
]


@pytest.mark.parametrize("change", NODE_CHANGES, ids=lambda c: next(iter(c)))
def test_a_change_the_operator_reads_shows_through_the_compact_copy(
    change: dict[str, Any],
) -> None:
    base, changed = real_node(), real_node(**change)
    assert seen_by_operator(changed) != seen_by_operator(base)
    assert seen_by_operator(compact("Node", changed)) == seen_by_operator(changed)
    assert seen_by_operator(compact("Node", changed)) != seen_by_operator(compact("Node", base))


def test_node_essentials_keeps_nothing_else() -> None:
    slim = node_essentials(real_node())
    assert set(slim) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert set(slim["metadata"]) == {"name", "uid", "resourceVersion", "labels"}
    assert set(slim["status"]) == {"allocatable", "conditions"}
    assert all(set(c) == {"type", "status"} for c in slim["status"]["conditions"])


def test_a_compact_pod_keeps_its_node_and_mig_slice() -> None:
    container = {
        "name": "worker",
        "image": "w:1",
        "resources": {"limits": {"nvidia.com/mig-3g.40gb": 1, "cpu": "2"}},
    }
    pod = {
        "metadata": {"name": "w", "namespace": "ns", "managedFields": MANAGED_FIELDS},
        "spec": {"nodeName": "n1", "containers": [container], "dnsPolicy": "ClusterFirst"},
    }
    slim = compact("Pod", pod)
    assert slim["spec"] == {
        "nodeName": "n1",
        "containers": [{"resources": {"limits": {"nvidia.com/mig-3g.40gb": 1}}}],
    }
    assert pod_profile(slim) == "3g.40gb"  # what the MIG slack rule reads
    plain = {**pod, "spec": {"nodeName": "n1", "containers": [{"name": "worker"}]}}
    assert compact("Pod", plain)["spec"] == {"nodeName": "n1"}


@pytest.fixture(scope="module")
def written() -> list[Manifest]:
    return example_manifests()


def as_served(manifest: Manifest) -> Manifest:
    """The manifest as the API server returns it: server fields and defaults added."""
    served = copy.deepcopy(manifest)
    meta = served["metadata"]
    meta.update(
        resourceVersion="7",
        uid="server-uid",
        creationTimestamp="2025-01-01T00:00:00Z",
        managedFields=MANAGED_FIELDS,
    )
    if manifest["kind"] == "Deployment":
        served["spec"]["revisionHistoryLimit"] = 10
        served["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
        served["status"] = {
            "replicas": 2,
            "readyReplicas": 2,
            "conditions": [{"type": "Available", "status": "True"}],
        }
    return served


def test_compact_owned_objects_diff_and_read_back_like_the_served_ones(
    written: list[Manifest],
) -> None:
    kinds = {m["kind"] for m in written}
    assert kinds == {"Deployment", "Service", "ConfigMap"}
    for desired in written:
        served = as_served(desired)
        slim = compact(desired["kind"], served)
        assert not _differs(desired, served)
        assert not _differs(desired, slim), desired["metadata"]["name"]
        unmanaged = {k: v for k, v in served["metadata"].items() if k != "managedFields"}
        assert slim == {**served, "metadata": unmanaged}
        if desired["kind"] == "Deployment":
            assert observe_worker(slim) == observe_worker(served)
        if desired["kind"] == "ConfigMap":
            assert observe_routing(slim) == observe_routing(served)


def test_compact_copies_share_strings_not_containers(written: list[Manifest]) -> None:
    a, b = (compact("Deployment", as_served(m)) for m in written[:4:2])
    key_a = next(k for k in a["metadata"]["labels"] if k == "app.kubernetes.io/managed-by")
    key_b = next(k for k in b["metadata"]["labels"] if k == "app.kubernetes.io/managed-by")
    assert key_a is key_b
    assert (
        a["metadata"]["labels"]["app.kubernetes.io/managed-by"]
        is (b["metadata"]["labels"]["app.kubernetes.io/managed-by"])
    )
    c = compact("Deployment", a)
    assert c == a
    assert c is not a
    assert c["spec"] is not a["spec"]


def test_the_cache_keeps_compact_copies_and_skips_a_version_it_has(written: list[Manifest]) -> None:
    cache = ObjectCache()
    served = as_served(written[0])
    cache.put("Deployment", served)
    ns, name = served["metadata"]["namespace"], served["metadata"]["name"]
    kept = cache.get("Deployment", ns, name)
    assert kept is not None
    assert kept is not served
    assert "managedFields" not in kept["metadata"]
    cache.put("Deployment", served, same_version=False)  # the watch delivers it again
    assert cache.get("Deployment", ns, name) is kept
    cache.put("Deployment", {**served, "status": {}})  # the actuator's own write: replaced
    assert cache.get("Deployment", ns, name) is not kept
    older = {**served, "metadata": {**served["metadata"], "resourceVersion": "6"}}
    cache.put("Deployment", older)
    assert (cache.get("Deployment", ns, name) or {})["metadata"]["resourceVersion"] == "7"


def test_drop_unlisted_keeps_what_is_newer_than_the_listing() -> None:
    cache = ObjectCache()
    for name, rv in (("listed", "5"), ("gone", "4"), ("added-since", "12"), ("no-rv", None)):
        meta: dict[str, Any] = {"name": name, "namespace": "ns"}
        if rv is not None:
            meta["resourceVersion"] = rv
        cache.put("Service", {"metadata": meta})
    cache.put("ConfigMap", {"metadata": {"name": "other-kind", "namespace": "ns"}})
    cache.drop_unlisted("Service", {("ns", "listed")}, 10)
    left = {name for (kind, _, name) in cache.objects if kind == "Service"}
    assert left == {"listed", "added-since"}
    assert cache.get("ConfigMap", "ns", "other-kind") is not None
    cache.drop_unlisted("Service", {("ns", "listed")}, None)  # no list version: all unlisted go
    assert {name for (_, _, name) in cache.objects} == {"listed", "other-kind"}


LIST = {
    "kind": "DeploymentList",
    "apiVersion": "apps/v1",
    "metadata": {"resourceVersion": "99", "continue": "next-page"},
    "items": [{"metadata": {"name": f"d-{i}"}, "spec": {"replicas": i}} for i in range(5)],
}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(LIST),
        json.dumps(LIST, indent=2),
        json.dumps({"items": LIST["items"], "metadata": LIST["metadata"]}),  # items first
        json.dumps(LIST).encode(),
    ],
    ids=["compact", "indented", "items-first", "bytes"],
)
def test_a_list_page_is_read_one_item_at_a_time(text: str | bytes) -> None:
    page = ListPage(text)
    assert list(page.items()) == LIST["items"]
    assert page.continue_token == "next-page"
    assert page.resource_version == 99


def test_a_list_page_of_other_shapes() -> None:
    last = ListPage(json.dumps({"metadata": {"resourceVersion": "3", "continue": ""}}))
    assert list(last.items()) == []
    assert last.continue_token is None
    assert last.resource_version == 3
    assert list(ListPage(json.dumps({"items": None})).items()) == []
    assert list(ListPage(LIST).items()) == LIST["items"]  # an already decoded response
    assert list(ListPage(b"[1, 2]").items()) == []  # not a list response: nothing
    broken = ListPage(json.dumps(LIST)[:-40])
    with pytest.raises(ValueError, match="malformed"):
        list(broken.items())


def service_event(i: int) -> dict[str, Any]:
    return {"metadata": {"name": f"s{i}", "namespace": "ns", "resourceVersion": str(i + 1)}}


async def test_the_driver_lists_once_kopfs_initial_listing_is_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first pass (the driver's listing, parsing, planning) waits for kopf's initial
    listing (events without a type) to stop, so their memory does not stack; watch events
    do not hold it back, and it waits at most `LISTING_WAIT_S`."""
    from kubernetes import client as k8s

    from accordion.operator import handlers

    monkeypatch.setattr(handlers, "LISTING_QUIET_S", 0.2)
    driver = handlers.Driver(config=OperatorConfig(watch_nodes=False), api_client=k8s.ApiClient())
    await asyncio.wait_for(driver.listing_done(), 0.1)  # nothing listed: no wait

    async def listing(count: int, event_type: str | None) -> None:
        for i in range(count):
            driver.observe("Service", event_type, service_event(i))
            await asyncio.sleep(0.1)

    started = time.monotonic()
    feed = asyncio.create_task(listing(5, None))
    await asyncio.sleep(0.01)
    await driver.listing_done()
    assert feed.done()
    assert time.monotonic() - started >= 0.4 + 0.2 - 0.05
    assert len(driver.cache.of_kind("Service")) == 5

    await asyncio.sleep(0.2)
    feed = asyncio.create_task(listing(5, "MODIFIED"))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(driver.listing_done(), 0.35)  # watch events: no wait (else >= 0.6 s)
    await feed

    monkeypatch.setattr(handlers, "LISTING_WAIT_S", 0.3)
    feed = asyncio.create_task(listing(20, None))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await driver.listing_done()
    # an endless listing (2 s of events): waited at most 0.3 s; room for a noisy machine
    assert 0.25 <= time.monotonic() - started < 1.5
    feed.cancel()
