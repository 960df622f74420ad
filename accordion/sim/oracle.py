"""The oracle bound: per second, perfect knowledge of that second's demand, fractional devices.

For each second, a linear program over (variant, pool) options with fractional device counts:
first serve as much of the second's arrivals as the cluster can, then maximize the accuracy of
what is served. Capacity per device is Proteus's (largest batch with p50 latency under SLO / 2,
its throughput B / L(B)), so the bound is on the same footing as every policy. No policy can do
better on that footing; each policy's distance to it is what planning and batching lose.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortools.linear_solver import pywraplp

from accordion.sim.policy import profile_s
from accordion.sim.workload import Cluster, Workload


@dataclass(frozen=True)
class OracleSecond:
    second: int
    demand: int
    served: float
    accuracy: float | None
    served_by_family: tuple[float, ...] = ()
    """Served requests per family (workload family index) in this second."""


@dataclass(frozen=True)
class OracleBound:
    seconds: list[OracleSecond]

    @property
    def served_fraction(self) -> float:
        demand = sum(s.demand for s in self.seconds)
        return sum(s.served for s in self.seconds) / demand if demand else 1.0

    @property
    def effective_accuracy(self) -> float:
        served = sum(s.served for s in self.seconds if s.accuracy is not None)
        acc = sum(s.served * s.accuracy for s in self.seconds if s.accuracy is not None)
        return acc / served if served else 0.0


def oracle_bound(cluster: Cluster, workload: Workload, percentile: str = "p50") -> OracleBound:
    """The per-second LP relaxation bound (see the module docstring)."""
    counts: dict[int, dict[int, int]] = {}
    for a, f in zip(workload.arrival_s, workload.family, strict=True):
        counts.setdefault(int(a), {}).setdefault(f, 0)
        counts[int(a)][f] += 1
    fams = {f.name: f for f in cluster.families}
    opts: list[tuple[int, str, float, float]] = []  # (family index, pool, capacity, accuracy)
    for i, name in enumerate(workload.families):
        fam = fams[name]
        for v in fam.variants:
            for pool in sorted(v.profiles):
                prof = profile_s(v, pool, percentile)  # type: ignore[arg-type]
                fit = [(b, lat) for b, lat in sorted(prof.items()) if lat < fam.slo_s / 2]
                if fit:
                    b, lat = fit[-1]
                    opts.append((i, pool, b / lat, v.accuracy))
    devices = {p.name: p.devices for p in cluster.pools}
    out = []
    for sec in sorted(counts):
        demand = counts[sec]
        solver = pywraplp.Solver.CreateSolver("GLOP")
        assert solver is not None
        n = [solver.NumVar(0, devices[o[1]], "") for o in opts]
        r = [solver.NumVar(0, demand.get(o[0], 0), "") for o in opts]
        for k, o in enumerate(opts):
            solver.Add(r[k] <= o[2] * n[k])
        for pool, count in devices.items():
            solver.Add(solver.Sum([n[k] for k, o in enumerate(opts) if o[1] == pool]) <= count)
        for i, d in demand.items():
            solver.Add(solver.Sum([r[k] for k, o in enumerate(opts) if o[0] == i]) <= d)
        served = solver.Sum(r)
        solver.Maximize(served)
        solver.Solve()
        best = solver.Objective().Value()
        solver.Add(served >= best - 1e-6 * max(1.0, best))
        solver.Maximize(solver.Sum([o[3] * r[k] for k, o in enumerate(opts)]))
        solver.Solve()
        total = sum(x.solution_value() for x in r)
        acc = solver.Objective().Value() / total if total > 0 else None
        by_family = [0.0] * len(workload.families)
        for k, o in enumerate(opts):
            by_family[o[0]] += r[k].solution_value()
        out.append(OracleSecond(sec, sum(demand.values()), total, acc, tuple(by_family)))
    return OracleBound(out)
