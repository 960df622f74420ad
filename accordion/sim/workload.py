"""Workloads and clusters for the simulator: Proteus's data, and a simple format of our own.

Proteus's artifact ships profiles (``aggregate_profiled.csv``: per model, accelerator and batch
size the p50/p90 latency in ms and the accuracy normalized to the family's best), variant lists
per family (``model_variants/<family>``) and traces: one file per family, each line
``arrival_ms,qos,slo_ms``, in a directory named after the SLO. Its cluster has CPUs, VPUs that
run the CPU profile, and two GPU generations.

Our own rate format is one segment per line, ``service,start_s,end_s,rate_qps[,end_rate_qps
[,process]]``: the rate ramps linearly from ``rate_qps`` to ``end_rate_qps`` over the segment,
and arrivals are a Poisson process (``poisson``, the default) or evenly spaced (``uniform``).
Lines starting with ``#`` are comments.
"""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from accordion.solver import PoolSpec, ProfilePoint, VariantSpec

#: Proteus's cluster: pool name -> the profile's accelerator column (VPUs run the CPU profile).
PROTEUS_POOL_PROFILE = {
    "cpu": "onnxruntime_cpu",
    "vpu": "onnxruntime_cpu",
    "gpu-ampere": "onnxruntime_gpu_ampere",
    "gpu-pascal": "onnxruntime_gpu_pascal",
}
PROTEUS_BATCH_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Family:
    """One model family (one service): its variants with profiles per pool, and its SLO."""

    name: str
    slo_s: float
    variants: tuple[VariantSpec, ...]

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"{self.name}: no variant {name!r}")


@dataclass(frozen=True)
class Cluster:
    """Device pools and the families that may run on them."""

    pools: tuple[PoolSpec, ...]
    families: tuple[Family, ...]

    def scaled(self, device_factor: int) -> Cluster:
        """The same cluster with `device_factor` times the devices in every pool."""
        pools = tuple(
            PoolSpec(
                name=p.name, devices=p.devices * device_factor, cost_per_device=p.cost_per_device
            )
            for p in self.pools
        )
        return Cluster(pools=pools, families=self.families)


@dataclass
class Workload:
    """Requests sorted by arrival: arrival time, family index and deadline, in seconds."""

    families: list[str]
    arrival_s: list[float] = field(default_factory=list)
    family: list[int] = field(default_factory=list)
    deadline_s: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return max(self.arrival_s, default=0.0)

    def sliced(self, start_s: float, end_s: float) -> Workload:
        """Requests arriving in [start_s, end_s), shifted to start at 0."""
        out = Workload(families=list(self.families))
        for a, f, d in zip(self.arrival_s, self.family, self.deadline_s, strict=True):
            if start_s <= a < end_s:
                out.arrival_s.append(a - start_s)
                out.family.append(f)
                out.deadline_s.append(d - start_s)
        return out

    def scaled(self, factor: int, seed: int = 0) -> Workload:
        """`factor` times the demand: every request repeated with a small seeded jitter."""
        rng = random.Random(seed)
        rows: list[tuple[float, int, float]] = []
        for a, f, d in zip(self.arrival_s, self.family, self.deadline_s, strict=True):
            for _ in range(factor):
                jitter = rng.uniform(0.0, 0.001)
                rows.append((a + jitter, f, d + jitter))
        return _sorted_workload(self.families, rows)


def _sorted_workload(families: list[str], rows: list[tuple[float, int, float]]) -> Workload:
    rows.sort()
    return Workload(
        families=families,
        arrival_s=[r[0] for r in rows],
        family=[r[1] for r in rows],
        deadline_s=[r[2] for r in rows],
    )


def read_proteus_trace(directory: Path, families: list[str] | None = None) -> Workload:
    """Read a Proteus trace directory (one ``<family>.txt`` per family; the name is the SLO).

    Each line is ``arrival_ms,qos,slo_ms``; the line's own SLO wins over the directory name.
    """
    directory = Path(directory)
    files = sorted(directory.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{directory}: no <family>.txt trace files")
    names = families if families is not None else [f.stem for f in files]
    try:
        default_slo_ms = float(directory.name)
    except ValueError:
        default_slo_ms = math.nan
    rows: list[tuple[float, int, float]] = []
    for index, name in enumerate(names):
        path = directory / f"{name}.txt"
        with path.open() as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                parts = line.split(",")
                try:
                    arrival_ms = float(parts[0])
                    slo_ms = float(parts[2]) if len(parts) > 2 else default_slo_ms
                except (ValueError, IndexError) as exc:
                    raise ValueError(f"{path}:{lineno}: expected arrival_ms,qos,slo_ms") from exc
                if math.isnan(slo_ms):
                    raise ValueError(f"{path}:{lineno}: no SLO on the line or in the directory")
                rows.append((arrival_ms / 1000.0, index, (arrival_ms + slo_ms) / 1000.0))
    return _sorted_workload(list(names), rows)


def read_rate_trace(path: Path, slo_s: dict[str, float], seed: int = 0) -> Workload:
    """Read our rate format (see the module docstring) and draw arrivals with a seeded RNG."""
    rng = random.Random(seed)
    segments: list[tuple[str, float, float, float, float, str]] = []
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            service = parts[0]
            start, end, rate = float(parts[1]), float(parts[2]), float(parts[3])
            end_rate = float(parts[4]) if len(parts) > 4 and parts[4] else rate
            process = parts[5] if len(parts) > 5 else "poisson"
        except (ValueError, IndexError) as exc:
            raise ValueError(
                f"{path}:{lineno}: expected service,start_s,end_s,rate_qps[,end_rate_qps[,process]]"
            ) from exc
        if process not in ("poisson", "uniform") or end <= start or rate < 0 or end_rate < 0:
            raise ValueError(f"{path}:{lineno}: bad segment {line!r}")
        if service not in slo_s:
            raise ValueError(f"{path}:{lineno}: unknown service {service!r}")
        segments.append((service, start, end, rate, end_rate, process))
    names = sorted({s[0] for s in segments})
    index = {n: i for i, n in enumerate(names)}
    rows: list[tuple[float, int, float]] = []
    for service, start, end, rate, end_rate, process in segments:
        for t in segment_arrivals(start, end, rate, end_rate, process, rng):
            rows.append((t, index[service], t + slo_s[service]))
    return _sorted_workload(names, rows)


def segment_arrivals(
    start_s: float, end_s: float, rate: float, end_rate: float, process: str, rng: random.Random
) -> list[float]:
    """Arrival times of a linearly ramping rate (Poisson by thinning, or evenly spaced)."""
    out: list[float] = []
    peak = max(rate, end_rate)
    if peak <= 0:
        return out
    span = end_s - start_s

    def rate_at(t: float) -> float:
        return rate + (end_rate - rate) * (t - start_s) / span

    if process == "uniform":
        # Invert the cumulative count: the k-th arrival where the integral of the rate reaches k.
        t, acc = start_s, 0.0
        step = min(0.001, span / 1000)
        while t < end_s:
            acc += rate_at(t) * step
            t += step
            while acc >= 1.0:
                acc -= 1.0
                out.append(t)
        return out
    t = start_s
    while True:
        t += rng.expovariate(peak)
        if t >= end_s:
            return out
        if rng.random() * peak <= rate_at(t):
            out.append(t)


def load_proteus_cluster(
    data_dir: Path,
    devices_per_pool: int = 10,
    slo_s: float = 0.3,
    batch_sizes: tuple[int, ...] = PROTEUS_BATCH_SIZES,
    families: list[str] | None = None,
) -> Cluster:
    """Proteus's cluster and families from its artifact's data directory.

    Accuracy is the profile's ``Normalized_Accuracy`` (a percentage of the family's best), as
    Proteus reports it. Only `batch_sizes` are kept; variants without a profile on a pool simply
    cannot run there.
    """
    data_dir = Path(data_dir)
    profiles: dict[str, dict[str, list[ProfilePoint]]] = defaultdict(lambda: defaultdict(list))
    accuracy: dict[str, float] = {}
    with (data_dir / "aggregate_profiled.csv").open() as fh:
        for row in csv.DictReader(fh):
            batch = int(row["batchsize"])
            if batch not in batch_sizes:
                continue
            model = row["Model"]
            accuracy[model] = float(row["Normalized_Accuracy"])
            try:
                p50_ms = float(row["50th_pct"])
            except ValueError:
                continue  # not measured
            try:
                p90_ms = max(float(row["90th_pct"]), p50_ms)
            except ValueError:
                p90_ms = p50_ms
            point = ProfilePoint(batch_size=batch, p50_s=p50_ms / 1000.0, p90_s=p90_ms / 1000.0)
            for pool, accel in PROTEUS_POOL_PROFILE.items():
                have = profiles[model][pool]
                if row["Accel"] == accel and all(p.batch_size != batch for p in have):
                    have.append(point)  # the first row of a duplicated measurement wins
    variant_dir = data_dir / "model_variants"
    names = families if families is not None else sorted(p.name for p in variant_dir.iterdir())
    fams: list[Family] = []
    for name in names:
        variants: list[VariantSpec] = []
        for line in (variant_dir / name).read_text().splitlines():
            if not line.strip():
                continue
            model, _, listed = line.rpartition(",")
            by_pool = {
                pool: pts
                for pool, pts in sorted(profiles.get(model, {}).items())
                if any(p.batch_size == 1 for p in pts)
            }
            acc = accuracy.get(model, float(listed))
            variants.append(VariantSpec(name=model, accuracy=min(100.0, acc), profiles=by_pool))
        fams.append(Family(name=name, slo_s=slo_s, variants=tuple(variants)))
    pools = tuple(
        PoolSpec(name=p, devices=devices_per_pool, cost_per_device=1.0)
        for p in PROTEUS_POOL_PROFILE
    )
    return Cluster(pools=pools, families=tuple(fams))
