"""The operator applying MIG layouts on kmock, with the test as the NVIDIA MIG manager.

`MigManager` does what the GPU operator's MIG manager does on a real node: it watches the node
label `nvidia.com/mig.config`, sets `nvidia.com/mig.config.state: pending`, reads the config's
mig-parted entries from the ConfigMap the operator writes (`gpu-operator/
accordion-mig-parted-config`), and only when the test lets it go rewrites the node's
allocatable (`nvidia.com/mig-<profile>` per slice, no whole `nvidia.com/gpu`) and sets the
state to `success`. It records, at each relabel, which pods were still bound to the node. The
test also plays the scheduler: it binds a worker pod to the node, as kube-scheduler would.

Checked: no worker is placed before the slices are in the node's allocatable; worker pods
request the slice's extended resource; a layout change drains the node's workers (the
operator deletes them) before it relabels the node.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from .conftest import Cluster, isvc, wait_for
from .test_nodes import operator  # noqa: F401 (the operator watching Nodes)

pytestmark = pytest.mark.timeout(180)

NS, SVC, POOL, NODE = "mig", "svc", "mig", "mig-node-1"
SELECTOR = {"accordion.dev/test-pool": "mig"}
CONFIG_NS, CONFIG_MAP = "gpu-operator", "accordion-mig-parted-config"


def mig_pool() -> dict[str, Any]:
    return {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "DevicePool",
        "metadata": {"name": POOL},
        "spec": {
            "devices": 1,
            "nodeSelector": SELECTOR,
            "resources": {"limits": {"nvidia.com/gpu": 1}},
            "device": "cuda",
            "mig": {"gpuModel": "A100-80GB", "layouts": [{"1g.10gb": 7}, {"7g.80gb": 1}]},
        },
    }


def gpu_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE, "labels": {**SELECTOR, "nvidia.com/gpu.count": "1"}},
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": "1", "cpu": "8"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


class MigManager:
    """The MIG manager of one node (module docstring)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.applied: str | None = None
        self.relabels: list[tuple[str, list[str]]] = []
        """(config, worker pods bound to the node when the label changed)."""
        self.go = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def pods_on_node(self) -> list[str]:
        pods = self.cluster.core.list_pod_for_all_namespaces(_preload_content=False)
        return sorted(
            p["metadata"]["name"]
            for p in json.loads(pods.data)["items"]
            if (p.get("spec") or {}).get("nodeName") == NODE
        )

    def _entries(self, config: str) -> list[dict[str, Any]] | None:
        try:
            cm = self.cluster.core.read_namespaced_config_map(CONFIG_MAP, CONFIG_NS)
        except Exception:
            return None
        doc = json.loads(cm.data["config.yaml"])  # JSON is YAML
        entries: list[dict[str, Any]] | None = doc["mig-configs"].get(config)
        return entries

    def _run(self) -> None:
        while not self._stop.is_set():
            node = self.cluster.core.read_node(NODE)
            config = (node.metadata.labels or {}).get("nvidia.com/mig.config")
            if config and config != self.applied:
                self.relabels.append((config, self.pods_on_node()))
                self.applied = config
                self._label("pending")
                while not self.go.wait(0.05):
                    if self._stop.is_set():
                        return
                self.go.clear()
                entries = self._entries(config)
                if entries is None:
                    self._label("failed")
                    continue
                slices: dict[str, int] = {}
                for entry in entries:  # one GPU on this node: every entry applies to it
                    for profile, n in (entry.get("mig-devices") or {}).items():
                        slices[f"nvidia.com/mig-{profile}"] = int(n)
                allocatable = {"cpu": "8", "nvidia.com/gpu": None} | {
                    k: str(v) for k, v in slices.items()
                }
                old = node.status.allocatable or {}
                gone = {k: None for k in old if k.startswith("nvidia.com/mig-") and k not in slices}
                self.cluster.core.patch_node_status(
                    NODE, {"status": {"allocatable": allocatable | gone}}
                )
                self._label("success")
            time.sleep(0.05)  # a watch would do; polling the node is enough here

    def _label(self, state: str) -> None:
        self.cluster.core.patch_node(
            NODE, {"metadata": {"labels": {"nvidia.com/mig.config.state": state}}}
        )


def node_labels(cluster: Cluster) -> dict[str, str]:
    return dict(cluster.core.read_node(NODE).metadata.labels or {})


def node_taints(cluster: Cluster) -> list[str]:
    return [t.key for t in cluster.core.read_node(NODE).spec.taints or []]


def limits(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return dict(container["resources"].get("limits") or {})


def service(profile: str, variant: str) -> dict[str, Any]:
    body = isvc(SVC, NS, f"{POOL}/{profile}", 40.0)
    body["spec"]["variants"] = [
        {
            "name": variant,
            "accuracy": 80,
            "model": {"storageUri": f"/models/{variant}.pt"},
            "profiles": [{"pool": f"{POOL}/{profile}", "batches": [{"batchSize": 1, "p50Ms": 20}]}],
        }
    ]
    return body


def bind_pod(cluster: Cluster, deployment: dict[str, Any]) -> str:
    """Act as kube-scheduler and the kubelet: one pod of the Deployment, bound to the node."""
    name = f"{deployment['metadata']['name']}-pod1"
    template = deployment["spec"]["template"]
    cluster.core.create_namespaced_pod(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
            "spec": {**template["spec"], "nodeName": NODE},
            "status": {"phase": "Running"},
        },
    )
    return name


def test_layouts_applied_through_the_mig_manager(cluster: Cluster) -> None:
    manager = MigManager(cluster)
    cluster.core.create_node(gpu_node())
    manager.start()
    try:
        cluster.custom.create_cluster_custom_object(
            "accordion.dev", "v1alpha1", "devicepools", mig_pool()
        )
        cluster.create(service("1g.10gb", "small"))

        # The planner splits the GPU into 7x 1g.10gb: NVIDIA's default name for it.
        wait_for("the MIG manager to see a config", lambda: manager.relabels)
        assert manager.relabels[0][0] == "all-1g.10gb"
        assert "accordion.dev/mig-reconfigure" in node_taints(cluster)
        wait_for(
            "state pending",
            lambda: node_labels(cluster).get("nvidia.com/mig.config.state") == "pending",
        )
        # The operator wrote the mig-parted config the label names.
        cm = cluster.core.read_namespaced_config_map(CONFIG_MAP, CONFIG_NS)
        config = json.loads(cm.data["config.yaml"])["mig-configs"]["all-1g.10gb"]
        assert config == [{"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 7}}]
        wait_for("the service planned", lambda: cluster.conditions(NS, SVC).get("Planned"))
        # Planned, labelled, pending: no slice in the allocatable yet, so no replica is
        # planned on it (the GPU is out of service, `MigSpec.in_service`) and no worker made.
        assert not cluster.status(NS, SVC).get("plan"), "a replica planned on a pending GPU"
        assert cluster.workers(NS) == {}, "a worker placed before its slices exist"

        manager.go.set()
        workers = wait_for("a worker once the slices exist", lambda: cluster.workers(NS))
        planned = wait_for("the replica planned", lambda: cluster.status(NS, SVC).get("plan"))
        assert planned[0]["pool"] == f"{POOL}/1g.10gb"
        small = workers["small"]
        assert small["spec"]["replicas"] >= 1
        assert limits(small) == {"nvidia.com/mig-1g.10gb": "1"}
        wait_for("the drain taint gone", lambda: not node_taints(cluster))

        def pool_status() -> dict[str, Any]:
            obj = cluster.custom.get_cluster_custom_object(
                "accordion.dev", "v1alpha1", "devicepools", POOL
            )
            return dict(obj.get("status") or {})

        # The pool's GPU is in use (split), and its node counts though it offers no whole GPU.
        wait_for("the pool's GPU in use", lambda: pool_status().get("allocatedDevices") == 1)
        assert pool_status()["matchingNodes"] == 1
        cluster.mark_ready(NS)
        pod = bind_pod(cluster, small)

        # A large model replaces the small one: it needs the whole GPU (1x 7g.80gb).
        cluster.patch(
            NS, SVC, {"spec": {"variants": service("7g.80gb", "big")["spec"]["variants"]}}
        )
        wait_for("the relabel to all-7g.80gb", lambda: len(manager.relabels) == 2)
        config, bound = manager.relabels[1]
        assert config == "all-7g.80gb"
        assert bound == [], f"relabelled with workers on the node: {bound}"
        assert pod not in manager.pods_on_node()  # the operator deleted it (drain)
        assert "big" not in cluster.workers(NS), "a worker placed before its slice exists"

        manager.go.set()
        big = wait_for("the big worker", lambda: cluster.workers(NS).get("big"))
        assert limits(big) == {"nvidia.com/mig-7g.80gb": "1"}
    finally:
        manager.stop()
