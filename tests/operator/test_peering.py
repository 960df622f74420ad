"""Leader election with kopf peering: of two operator replicas only one acts, and the other
takes over when the leader goes away (own emulator, two real `kopf run` processes). The leader
labels its own pod `accordion.dev/leader: "true"` (the reports Service's selector), a replica
standing by `"false"`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from accordion.operator.leaderlabel import LEADER_LABEL

from .conftest import Cluster, EmulatorThread, Operator, isvc, wait_for

pytestmark = pytest.mark.timeout(120)

OPERATOR_NAMESPACE = "accordion-system"


def operator_pod(cluster: Cluster, name: str) -> None:
    """The pod an operator replica runs in, as the chart's Deployment makes it."""
    cluster.core.create_namespaced_pod(
        OPERATOR_NAMESPACE,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": OPERATOR_NAMESPACE,
                "labels": {"app": "accordion"},
            },
            "spec": {"containers": [{"name": "operator", "image": "accordion-operator"}]},
        },
    )


def leader_label(cluster: Cluster, name: str) -> str | None:
    pod = cluster.core.read_namespaced_pod(name, OPERATOR_NAMESPACE)
    return (pod.metadata.labels or {}).get(LEADER_LABEL)


@pytest.fixture(scope="module")
def operator(
    emulator: EmulatorThread, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """The leader (priority 100); the test starts the follower."""
    op = Operator(
        kubeconfig,
        tmp_path_factory.mktemp("leader") / "operator.log",
        {"POD_ID": "op-leader", "POD_NAMESPACE": OPERATOR_NAMESPACE},
    )
    yield op
    op.stop()


def test_follower_waits_and_takes_over(
    cluster: Cluster, operator: Operator, kubeconfig: Path, tmp_path: Path
) -> None:
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": "accordion"},
    }
    cluster.custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)

    def registered() -> int:
        obj = cluster.custom.get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", "accordion"
        )
        return len(obj.get("status") or {})

    # The follower first, then the leader: the leader's registration is a change of the peering
    # object that the follower's watch is sure to see, so the follower pauses before any
    # object exists. (A replica started second may act on what it lists before its first
    # peering event arrives; kopf's keepalive then pauses it only a while later.)
    operator_pod(cluster, "op-leader")
    operator_pod(cluster, "op-follower")
    follower = Operator(
        kubeconfig,
        tmp_path / "follower.log",
        {"POD_ID": "op-follower", "POD_NAMESPACE": OPERATOR_NAMESPACE},
    )
    follower.start("--verbose", "--peering", "accordion", "--priority", "10")
    try:
        wait_for("the follower in the peering object", lambda: registered() >= 1)
        operator.start("--verbose", "--peering", "accordion", "--priority", "100")
        wait_for("the follower to pause", lambda: "Pausing operations" in follower.log())
        cluster.create_pool("pool-peer", 2)
        cluster.create(isvc("first", "peer", "pool-peer", 10.0))
        wait_for("the leader serves", lambda: cluster.workers("peer"))
        wait_for("the status", lambda: cluster.conditions("peer", "first"))
        # The follower starts paused (or pauses on seeing the leader): it handles nothing.
        wait_for("the leader's log", lambda: "Handler 'on_service' succeeded" in operator.log())
        assert "Handler 'on_service' succeeded" not in follower.log()
        assert "Handler 'on_deployment' succeeded" not in follower.log()
        # The reports Service reaches the leader only.
        wait_for("the leader's label", lambda: leader_label(cluster, "op-leader") == "true")
        wait_for("the follower's", lambda: leader_label(cluster, "op-follower") == "false")

        operator.stop()
        cluster.create(isvc("second", "peer2", "pool-peer", 10.0))
        wait_for("the follower takes over", lambda: cluster.workers("peer2"), timeout_s=60)
        assert "leading: op-follower leads" in follower.log()
        wait_for("the new leader's label", lambda: leader_label(cluster, "op-follower") == "true")
    finally:
        follower.stop()


def test_demoted_leader_stands_by_at_its_next_pass(
    cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    """A leader that a peer of higher priority joins stops acting (the driver reads the peering
    object before each pass), and the new leader serves what comes next."""
    cluster.custom.create_cluster_custom_object(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "demote"}},
    )
    low = Operator(kubeconfig, tmp_path / "low.log", {"POD_ID": "op-low"})
    high = Operator(kubeconfig, tmp_path / "high.log", {"POD_ID": "op-high"})
    low.start("--verbose", "--peering", "demote", "--priority", "10")
    try:
        wait_for("the first leader", lambda: "leading: op-low leads" in low.log())
        cluster.create_pool("pool-demote", 4)
        cluster.create(isvc("first", "demote", "pool-demote", 10.0))
        wait_for("the first leader serves", lambda: cluster.workers("demote"))
        high.start("--verbose", "--peering", "demote", "--priority", "100")
        wait_for(
            "the demoted leader to stand by",
            lambda: "standing by: peers of higher priority are alive: op-high" in low.log(),
        )
        wait_for("the new leader", lambda: "leading: op-high leads" in high.log())
        before = low.log().split("standing by:", 1)[1]
        cluster.create(isvc("second", "demote2", "pool-demote", 10.0))
        wait_for("the new leader serves", lambda: cluster.workers("demote2"), timeout_s=60)
        after = low.log().split("standing by:", 1)[1]
        assert "planned" not in after, after
        assert "Handler 'on_service' succeeded" not in after[len(before) :]
    finally:
        high.stop()
        low.stop()
