"""The planner on a slice of the Proteus artifact's measured profiles (skipped without them)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from accordion.solver import (
    PlannerSettings,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
    plan,
)

SHARED = Path(__file__).parents[2].parent / "shared"
CSV = SHARED / "data" / "proteus" / "aggregate_profiled.csv"
ACCEL = {"cpu": "onnxruntime_cpu", "gpu-ampere": "onnxruntime_gpu_ampere"}
RESNETS = {"resnet18_v1": 89.5, "resnet50_v1": 97.7, "resnet152_v1": 100.0}


def _resnet_family(demand_qps: float) -> ServiceSpec:
    points: dict[tuple[str, str], list[ProfilePoint]] = {}
    with CSV.open() as f:
        for row in csv.DictReader(f):
            if row["Model"] not in RESNETS or row["Accel"] not in ACCEL.values():
                continue
            pts = points.setdefault((row["Model"], row["Accel"]), [])
            if any(p.batch_size == int(row["batchsize"]) for p in pts):
                continue
            pts.append(
                ProfilePoint(batch_size=int(row["batchsize"]), p50_s=float(row["50th_pct"]) / 1000)
            )
    variants = [
        VariantSpec(
            name=name,
            accuracy=accuracy,
            profiles={pool: points[(name, accel)] for pool, accel in ACCEL.items()},
        )
        for name, accuracy in RESNETS.items()
    ]
    return ServiceSpec(name="vision/resnet", demand_qps=demand_qps, slo_s=0.3, variants=variants)


@pytest.mark.skipif(not CSV.exists(), reason="shared Proteus data not available")
def test_accuracy_scales_down_as_demand_rises_on_real_profiles() -> None:
    pools = [
        PoolSpec(name="cpu", devices=4, cost_per_device=1),
        PoolSpec(name="gpu-ampere", devices=2, cost_per_device=4),
    ]
    settings = PlannerSettings(latency_percentile="p50", utilization=1.0)
    accuracies = []
    for demand in (20.0, 400.0, 1500.0):
        result = plan(Problem(pools=pools, services=[_resnet_family(demand)], settings=settings))
        assert sum(r.replicas for r in result.rows if r.pool == "cpu") <= 4
        assert sum(r.replicas for r in result.rows if r.pool == "gpu-ampere") <= 2
        service = result.services[0]
        assert service.served_qps > 0
        assert service.effective_accuracy is not None
        accuracies.append(service.effective_accuracy)
        # Batch sizes respect the SLO: worst case twice the batch latency.
        for row in result.rows:
            assert 2 * row.max_batch_size / row.capacity_qps_per_replica <= 0.3 + 1e-9
    assert accuracies[0] == 100.0
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] < accuracies[0]
