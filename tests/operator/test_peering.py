"""Leader election with kopf peering: of two operator replicas only one acts, and the other
takes over when the leader goes away (own emulator, two real `kopf run` processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cluster, EmulatorThread, Operator, isvc, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def operator(
    emulator: EmulatorThread, kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """The leader (priority 100); the test starts the follower."""
    op = Operator(kubeconfig, tmp_path_factory.mktemp("leader") / "operator.log", {})
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
    operator.start("--peering", "accordion", "--priority", "100")
    follower = Operator(kubeconfig, tmp_path / "follower.log", {})
    follower.start("--peering", "accordion", "--priority", "10")
    try:
        cluster.create_pool("pool-peer", 2)
        cluster.create(isvc("first", "peer", "pool-peer", 10.0))
        wait_for("the leader serves", lambda: cluster.workers("peer"))
        wait_for("the status", lambda: cluster.conditions("peer", "first"))
        # The follower starts paused (or pauses on seeing the leader): it handles nothing.
        wait_for("the leader's log", lambda: "Handler 'on_service' succeeded" in operator.log())
        assert "Handler 'on_service' succeeded" not in follower.log()
        assert "Handler 'on_deployment' succeeded" not in follower.log()

        operator.stop()
        cluster.create(isvc("second", "peer2", "pool-peer", 10.0))
        wait_for("the follower takes over", lambda: cluster.workers("peer2"), timeout_s=60)
    finally:
        follower.stop()
