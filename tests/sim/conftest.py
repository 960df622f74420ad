"""Small hand-checkable clusters and a fixed-target control policy for the simulator tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from accordion.sim.policy import ControlPolicy, Target, TargetRow
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import Allocation, PoolSpec, ProfilePoint, VariantSpec
from accordion.workers.batching import BatchingPolicy, NoBatching

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "proteus"


@pytest.fixture
def proteus_data() -> Path:
    if not (SHARED / "aggregate_profiled.csv").exists():
        pytest.skip("../shared/data/proteus is not available")
    return SHARED


def flat_variant(name: str, accuracy: float, latency_s: float, pool: str = "gpu") -> VariantSpec:
    """A variant whose batches of 1, 2, 4 take latency_s, 1.5x and 2x that."""
    return VariantSpec(
        name=name,
        accuracy=accuracy,
        profiles={
            pool: [
                ProfilePoint(batch_size=1, p50_s=latency_s, p90_s=latency_s * 1.2),
                ProfilePoint(batch_size=2, p50_s=latency_s * 1.5, p90_s=latency_s * 1.8),
                ProfilePoint(batch_size=4, p50_s=latency_s * 2, p90_s=latency_s * 2.4),
            ]
        },
    )


def small_cluster(devices: int = 1, slo_s: float = 0.25, latency_s: float = 0.1) -> Cluster:
    fam = Family(
        name="f",
        slo_s=slo_s,
        variants=(
            flat_variant("big", 100.0, latency_s),
            flat_variant("small", 80.0, latency_s / 4),
        ),
    )
    return Cluster(pools=(PoolSpec(name="gpu", devices=devices),), families=(fam,))


def workload(arrivals: list[float], slo_s: float = 0.25) -> Workload:
    return Workload(
        families=["f"],
        arrival_s=list(arrivals),
        family=[0] * len(arrivals),
        deadline_s=[a + slo_s for a in arrivals],
    )


class FixedPolicy(ControlPolicy):
    """Always the same rows; a batcher from a factory."""

    name = "fixed"

    def __init__(
        self,
        rows: list[TargetRow],
        factory: Callable[[], BatchingPolicy] = NoBatching,
        replan_interval_s: float = 1000.0,
    ) -> None:
        self.rows = rows
        self.factory = factory
        self.replan_interval_s = replan_interval_s

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        return Target(rows=list(self.rows))

    def batcher(
        self, family: Family, variant: VariantSpec, pool: str, max_batch_size: int
    ) -> BatchingPolicy:
        return self.factory()


def row(variant: str = "big", replicas: int = 1, max_batch: int = 1) -> TargetRow:
    return TargetRow("f", variant, "gpu", replicas, max_batch, 10.0, 10.0)
