"""Planner problems built from the Proteus artifact's profiles, at Proteus's scale and beyond.

The data stays in the shared folder (never copied into the repository): profiles from
aggregate_profiled.csv, variants and accuracies from model_variants/, and per-family demand from
the mean rate of the zipf_exponential trace. Larger problems replicate the families with
perturbed demand and multiply the devices of every pool.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from accordion.solver import (
    PlannerSettings,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PROTEUS = SHARED / "data" / "proteus"

# Proteus's cluster: VPUs run the CPU profile (as in its simulator).
POOL_PROFILE = {
    "cpu": "onnxruntime_cpu",
    "vpu": "onnxruntime_cpu",
    "gpu-ampere": "onnxruntime_gpu_ampere",
    "gpu-pascal": "onnxruntime_gpu_pascal",
}
POOL_COST = {"cpu": 1.0, "vpu": 1.0, "gpu-ampere": 4.0, "gpu-pascal": 2.0}
BATCH_SIZES = (1, 2, 4, 8)
SLO_S = 0.3


@dataclass(frozen=True)
class Family:
    name: str
    variants: dict[str, float]  # variant -> accuracy (normalized, 0..100)
    mean_qps: float


def load_profiles(root: Path = PROTEUS) -> dict[tuple[str, str], list[ProfilePoint]]:
    """(model, accelerator) -> profile points at batch sizes 1, 2, 4, 8."""
    out: dict[tuple[str, str], list[ProfilePoint]] = {}
    with (root / "aggregate_profiled.csv").open() as f:
        for row in csv.DictReader(f):
            b = int(row["batchsize"])
            points = out.setdefault((row["Model"], row["Accel"]), [])
            # The CSV measures efficientnet-b1 on CPU twice: keep the first measurement.
            if b not in BATCH_SIZES or any(p.batch_size == b for p in points):
                continue
            point = ProfilePoint(
                batch_size=b,
                p50_s=float(row["50th_pct"]) / 1000,
                p90_s=float(row["90th_pct"]) / 1000 if row["90th_pct"] else None,
            )
            points.append(point)
    return out


def load_families(root: Path = PROTEUS) -> list[Family]:
    families = []
    trace_dir = root / "traces" / "zipf_exponential" / "300"
    for path in sorted((root / "model_variants").iterdir()):
        variants = {}
        for line in path.read_text().split():
            name, acc = line.rsplit(",", 1)
            variants[name] = float(acc)
        rows = [line.split(",") for line in (trace_dir / f"{path.name}.txt").read_text().split()]
        count = sum(int(r[1]) for r in rows)
        duration_s = int(rows[-1][0]) / 1000
        families.append(Family(path.name, variants, count / duration_s))
    return families


def build(
    devices_per_pool: int,
    services: int,
    load: float,
    settings: PlannerSettings | None = None,
    seed: int = 0,
) -> Problem:
    """`services` services cycling through Proteus's 9 families, on 4 pools of
    `devices_per_pool` devices.

    Demand per service is its family's trace mean rate times `load`, scaled with the cluster so
    the load per device stays the same as at Proteus's scale (40 devices, 9 families); copies
    beyond the first 9 get their demand perturbed by up to +-50%.
    """
    profiles = load_profiles()
    families = load_families()
    rng = random.Random(seed)
    per_device = devices_per_pool / 10 * len(families) / services
    specs = []
    for index in range(services):
        copy, which = divmod(index, len(families))
        fam = families[which]
        jitter = 1.0 if copy == 0 else rng.uniform(0.5, 1.5)
        variants = []
        for name, acc in sorted(fam.variants.items()):
            prof = {
                pool: profiles[(name, accel)]
                for pool, accel in POOL_PROFILE.items()
                if (name, accel) in profiles
            }
            if prof:
                variants.append(VariantSpec(name=name, accuracy=acc, profiles=prof))
        specs.append(
            ServiceSpec(
                name=f"{fam.name}-{copy}",
                demand_qps=round(fam.mean_qps * load * per_device * jitter, 3),
                slo_s=SLO_S,
                variants=variants,
            )
        )
    pools = [
        PoolSpec(name=p, devices=devices_per_pool, cost_per_device=POOL_COST[p])
        for p in POOL_PROFILE
    ]
    return Problem(pools=pools, services=specs, settings=settings or PlannerSettings())
