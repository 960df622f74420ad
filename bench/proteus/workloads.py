"""Generated workloads for the Proteus cluster: bursts and overload, as rate files.

Both use our rate format (`accordion.sim.workload.read_rate_trace`: one segment per line,
``service,start_s,end_s,rate_qps[,end_rate_qps[,process]]``, Poisson arrivals), so that they
are plain text anyone can read, plot or change. The files are committed next to this module;
`python bench/proteus/workloads.py` writes them again (deterministic).

* ``bursty.rates``: Proteus's family mix (each family's share of the zipf_exponential trace)
  at ~150 req/s in all, rising to ~1,100 req/s within one second three times, for ~45 s each,
  over 300 s.
* ``overload.rates``: equal demand per family, ramping from half of what the cluster can serve
  to three times it, holding, and back (what the cluster can serve: the largest equal demand
  per family that the oracle's LP serves in full, `max_equal_demand`).
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

from accordion.sim.oracle import oracle_bound
from accordion.sim.workload import Cluster, Workload, load_proteus_cluster, read_proteus_trace

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "proteus"
BURSTY = HERE / "bursty.rates"
OVERLOAD = HERE / "overload.rates"

BASE_QPS = 150.0
BURST_QPS = 1100.0
BURSTS = ((40.0, 85.0), (130.0, 175.0), (220.0, 265.0))
DURATION_S = 300.0


def family_mix(trace: Workload) -> dict[str, float]:
    """Each family's share of a trace's requests."""
    counts = Counter(trace.family)
    total = sum(counts.values())
    return {name: counts[i] / total for i, name in enumerate(trace.families)}


def bursty_lines(mix: dict[str, float]) -> list[str]:
    lines = [
        "# Bursts: the zipf_exponential family mix at ~150 req/s, rising to ~1,100 req/s within",
        "# one second for ~45 s, three times (bench/proteus/workloads.py).",
    ]
    edges = [0.0]
    for start, end in BURSTS:
        edges += [start, start + 1.0, end, end + 1.0]
    edges.append(DURATION_S)
    level = [BASE_QPS]
    for _ in BURSTS:
        level += [BASE_QPS, BURST_QPS, BURST_QPS, BASE_QPS]
    level.append(BASE_QPS)
    # Piecewise linear between the edges: flat, 1-s ramps up and down.
    for name, share in sorted(mix.items()):
        for (t0, t1), (q0, q1) in zip(pairwise(edges), pairwise(level), strict=True):
            if t1 > t0:
                lines.append(f"{name},{t0:g},{t1:g},{q0 * share:.3f},{q1 * share:.3f}")
    return lines


def max_equal_demand(cluster: Cluster) -> float:
    """The largest demand per family (req/s, every family alike) the oracle serves in full."""

    def served(qps: float) -> float:
        names = [f.name for f in cluster.families]
        n = round(qps)
        arrivals = [(i + 0.5) / n for i in range(n)]
        wl = Workload(
            families=names,
            arrival_s=[a for a in arrivals for _ in names],
            family=[f for _ in arrivals for f in range(len(names))],
            deadline_s=[a + 0.3 for a in arrivals for _ in names],
        )
        return oracle_bound(cluster, wl).served_fraction

    lo, hi = 1.0, 2000.0
    while hi - lo > 1.0:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if served(mid) >= 0.999 else (lo, mid)
    return lo


def overload_lines(cluster: Cluster) -> list[str]:
    d = max_equal_demand(cluster)
    lines = [
        f"# Overload: equal demand per family; the cluster serves at most ~{d:.0f} req/s per",
        "# family (oracle LP); ramp 0.5x -> 3x over 100 s, hold 60 s, back over 100 s, hold 40 s.",
    ]
    shape = ((0, 100, 0.5, 3.0), (100, 160, 3.0, 3.0), (160, 260, 3.0, 0.5), (260, 300, 0.5, 0.5))
    for f in sorted(cluster.families, key=lambda f: f.name):
        for t0, t1, a, b in shape:
            lines.append(f"{f.name},{t0},{t1},{a * d:.3f},{b * d:.3f}")
    return lines


def main() -> None:
    cluster = load_proteus_cluster(DATA)
    trace = read_proteus_trace(DATA / "traces" / "zipf_exponential" / "300")
    BURSTY.write_text("\n".join(bursty_lines(family_mix(trace))) + "\n")
    OVERLOAD.write_text("\n".join(overload_lines(cluster)) + "\n")
    print(f"wrote {BURSTY} and {OVERLOAD}")


if __name__ == "__main__":
    main()
