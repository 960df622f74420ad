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
* ``shapes/*.rates``: six shapes no goal is stated on, to check that what was built for the
  shapes above holds on others (`run.py --shapes`, ``proteus_shapes.md``). All on Proteus's
  family mix, 300 s: ``diurnal`` (200 -> 1,000 -> 200 req/s, a 150-s cosine, twice),
  ``flash-one`` (400 req/s; one family at a time rises 10x within a second for 60 s: resnet at
  60 s, bert at 180 s), ``mixshift`` (700 req/s; over 100-200 s the family shares move to the
  mix reversed: the least requested family gets the most requested one's share),
  ``steps`` (900 req/s, 100 from 100 s, 900 again from 200 s, each change within a second),
  ``sawtooth`` (200 -> 900 req/s over 25 s, back within a second, twelve times) and
  ``spikes`` (300 req/s; 1,200 for 3 s every 20 s from 10 s on, each change within half a
  second: spikes shorter than a re-plan and a model load, which only standing capacity can
  take).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from accordion.sim.oracle import oracle_bound
from accordion.sim.workload import Cluster, Workload, load_proteus_cluster, read_proteus_trace

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[2] / "shared" / "data" / "proteus"
BURSTY = HERE / "bursty.rates"
OVERLOAD = HERE / "overload.rates"
SHAPES = HERE / "shapes"

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


Rates = dict[str, float]
"""Req/s per family at one instant."""


def _scaled(mix: Rates, total: float) -> Rates:
    return {n: total * share for n, share in mix.items()}


def _diurnal(mix: Rates, t: float) -> Rates:
    return _scaled(mix, 600.0 - 400.0 * math.cos(2 * math.pi * t / 150.0))


FLASHES = (("resnet", 60.0, 120.0), ("bert", 180.0, 240.0))


def _flash_one(mix: Rates, t: float) -> Rates:
    def factor(name: str) -> float:
        return next((10.0 for f, a, b in FLASHES if f == name and a <= t < b), 1.0)

    return {n: 400.0 * share * factor(n) for n, share in mix.items()}


def _mixshift(mix: Rates, t: float) -> Rates:
    names = sorted(mix, key=lambda n: (mix[n], n))
    reversed_share = dict(zip(names, [mix[n] for n in reversed(names)], strict=True))
    w = min(1.0, max(0.0, (t - 100.0) / 100.0))
    return {n: 700.0 * ((1 - w) * mix[n] + w * reversed_share[n]) for n in mix}


def _steps(mix: Rates, t: float) -> Rates:
    return _scaled(mix, 100.0 if 100.0 <= t < 200.0 else 900.0)


def _sawtooth(mix: Rates, t: float) -> Rates:
    return _scaled(mix, 200.0 + 700.0 * (t % 25.0) / 25.0)


SPIKE_STARTS = tuple(10.0 + 20.0 * k for k in range(15))
"""Every 20 s from 10 s: a spike shorter than a re-plan and a model load (`_spikes`)."""


def _spikes(mix: Rates, t: float) -> Rates:
    spike = any(s + 0.5 <= t < s + 3.5 for s in SPIKE_STARTS)
    return _scaled(mix, 1200.0 if spike else 300.0)


SHAPE_FUNCTIONS: dict[str, tuple[Callable[[Rates, float], Rates], tuple[float, ...]]] = {
    # name: (rates at t, the instants between which the rates are linear)
    "diurnal": (_diurnal, tuple(float(t) for t in range(0, 301, 5))),
    "flash-one": (_flash_one, (0.0, 60.0, 61.0, 120.0, 121.0, 180.0, 181.0, 240.0, 241.0, 300.0)),
    "mixshift": (_mixshift, (0.0, 100.0, 200.0, 300.0)),
    "steps": (_steps, (0.0, 100.0, 101.0, 200.0, 201.0, 300.0)),
    "sawtooth": (
        _sawtooth,
        tuple(sorted({0.0, 300.0} | {25.0 * k + d for k in range(1, 12) for d in (-1.0, 0.0)})),
    ),
    "spikes": (
        _spikes,
        tuple(sorted({0.0, 300.0} | {s + d for s in SPIKE_STARTS for d in (0.0, 0.5, 3.5, 4.0)})),
    ),
}
"""Each shape's rates, and the knots of its piecewise linear rate file. A segment of a second
or less is a step: it ramps from the rate just before it to the rate at its end; a longer one
runs from the rate at its start to the rate just before its end."""


def shape_lines(name: str, mix: Rates) -> list[str]:
    """A shape's rate file (`SHAPE_FUNCTIONS`), one segment per family and knot interval."""
    rates, knots = SHAPE_FUNCTIONS[name]
    lines = [f"# Shape {name!r} on Proteus's family mix (bench/proteus/workloads.py)."]
    for family in sorted(mix):
        for t0, t1 in pairwise(knots):
            step = t1 - t0 <= 1.0
            q0 = rates(mix, t0 - 1e-9 if step else t0)[family]
            q1 = rates(mix, t1 if step else t1 - 1e-9)[family]
            lines.append(f"{family},{t0:g},{t1:g},{q0:.3f},{q1:.3f}")
    return lines


def main() -> None:
    cluster = load_proteus_cluster(DATA)
    trace = read_proteus_trace(DATA / "traces" / "zipf_exponential" / "300")
    mix = family_mix(trace)
    BURSTY.write_text("\n".join(bursty_lines(mix)) + "\n")
    OVERLOAD.write_text("\n".join(overload_lines(cluster)) + "\n")
    SHAPES.mkdir(exist_ok=True)
    for name in SHAPE_FUNCTIONS:
        (SHAPES / f"{name}.rates").write_text("\n".join(shape_lines(name, mix)) + "\n")
    print(f"wrote {BURSTY}, {OVERLOAD} and {len(SHAPE_FUNCTIONS)} shapes in {SHAPES}")


if __name__ == "__main__":
    main()
