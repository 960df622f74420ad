"""The batching policies on simulated time: the policy-level comparison without machine noise.

The real-server benchmark (`run.py`) runs on a 2-core machine shared with other work, where a
99%-within-SLO threshold measures the background load as much as the policy. This script
drives the very same policy objects with the same driver protocol
(`accordion.workers.batching.replay`), with execution latencies drawn from a latency profile
times log-normal noise (fixed seeds), so the comparison is repeatable. Same questions as
`run.py`: the highest mean arrival rate with >= 99% within the SLO, goodput at 2x that rate,
and the physical limit max_b b / L(b).

Every baseline gets its best configuration, searched here: Triton's `max_batch_size` x
`max_queue_delay`, Clipper's maximum batch size. Ours gets the largest cap its own SLO rule
allows. Two arrival processes: Poisson, and bursty arrivals shaped like production traffic
(a Proteus trace, the Twitter-derived `medium-normal_load` mobilenet one, replayed at the
target mean rate; read from ../shared/data/proteus, never copied here).

The default profile is the benchmark model's (p50, ms, one torch thread, idle machine); pass
another as `--profile 1:7.4,8:25,...`.

Usage: .venv/bin/python bench/batching/policy_sim.py  (writes bench/results/batching-sim.md)
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accordion.workers.batching import (
    BatchingPolicy,
    ReplayOutcome,
    Request,
    make_policy,
    replay,
)
from accordion.workers.config import BatchingConfig, interpolate_profile
from accordion.workers.loadgen import poisson_schedule

ROOT = Path(__file__).resolve().parents[2]
PROTEUS = ROOT.parent / "shared" / "data" / "proteus"
TRACE = PROTEUS / "traces" / "medium-normal_load" / "300" / "mobilenet.txt"
# The benchmark model (demo-xl over 4 tokens per request, see run.py): p50 ms, idle machine.
DEFAULT_PROFILE_MS = {
    1: 20.5, 2: 22.5, 4: 29.8, 8: 42.8, 16: 69.0, 32: 122.7, 48: 177.6, 64: 221.9, 96: 320.8,
}  # fmt: skip
TARGET = 0.99
TRITON_DELAYS_MS = (1.0, 5.0, 20.0)

Factory = Callable[[], BatchingPolicy]


def interpolate(profile_ms: dict[int, float]) -> Callable[[int], float]:
    """Execution latency (s) for any batch size, as the worker reads its profile."""
    return lambda b: interpolate_profile(profile_ms, b) / 1000


def rescale_schedule(
    offsets_s: list[float], rate_qps: float, duration_s: float, start_s: float = 0.0
) -> list[float]:
    """A trace's arrivals replayed at mean rate `rate_qps`: time is scaled by the trace's mean
    rate over `rate_qps` (so bursts keep their shape relative to the mean), then the window of
    `duration_s` that begins `start_s` (in scaled time) into it is returned, from 0. The
    window wraps around the trace's end."""
    if not offsets_s or rate_qps <= 0:
        return []
    ordered = sorted(offsets_s)
    span = ordered[-1] - ordered[0]
    if span <= 0:
        raise ValueError("a trace needs arrivals spread over time")
    factor = (len(ordered) / span) / rate_qps
    scaled = [(t - ordered[0]) * factor for t in ordered]
    period = span * factor
    out: list[float] = []
    lap = 0.0
    while True:
        for t in scaled:
            at = t + lap - start_s
            if at >= duration_s:
                return out
            if at >= 0:
                out.append(at)
        lap += period


def load_proteus_trace(path: Path = TRACE) -> list[float]:
    """Arrival offsets (s) of a Proteus trace file (lines `time_ms,count,slo_ms`)."""
    out: list[float] = []
    for line in path.read_text().splitlines():
        parts = line.split(",")
        if parts and parts[0].strip():
            out += [float(parts[0]) / 1000] * (int(parts[1]) if len(parts) > 1 else 1)
    return sorted(out)


@dataclass(frozen=True)
class Arrivals:
    """An arrival process: `schedule(rate, duration, seed)` -> offsets (s)."""

    name: str
    trace: tuple[float, ...] = ()

    def schedule(self, rate: float, duration_s: float, seed: int) -> list[float]:
        if not self.trace:
            return poisson_schedule(rate, duration_s, seed)
        # The window starts at a seed-dependent point of the trace (in scaled time).
        start = random.Random(seed).uniform(0, 300.0) * (len(self.trace) / self.trace[-1]) / rate
        return rescale_schedule(list(self.trace), rate, duration_s, start)


def simulate(
    policy: BatchingPolicy,
    arrivals_s: list[float],
    slo_s: float,
    latency_s: Callable[[int], float],
    seed: int,
    noise: float,
) -> ReplayOutcome:
    """Replay `arrivals_s` through `policy`; execution = profile x log-normal(0, noise)."""
    rng = random.Random(seed)
    requests = [Request(i, t, t + slo_s) for i, t in enumerate(arrivals_s)]
    return replay(policy, requests, lambda b: latency_s(b) * math.exp(rng.gauss(0.0, noise)))


def candidates(profile_ms: dict[int, float], slo_s: float) -> dict[str, dict[str, BatchingConfig]]:
    """Per policy family, the configurations searched (label -> worker configuration).

    Baselines: every cap up to the largest profiled batch that fits the SLO, and for Triton
    every `max_queue_delay` of `TRITON_DELAYS_MS`. Ours: one configuration, the largest such
    cap (its own rule, `SloBatcher.slo_batch`, limits the batch online)."""
    latency_s = interpolate(profile_ms)
    top = max(b for b in profile_ms if latency_s(b) <= slo_s) if latency_s(1) <= slo_s else 1
    caps = [c for c in (4, 8, 16, 24, 32, 48, 64, 96, 128) if c <= top] or [1]
    return {
        "none": {"no batching": BatchingConfig(policy="none", max_batch_size=1)},
        "triton": {
            f"Triton dynamic batcher (max {c}, delay {d:g} ms)": BatchingConfig(
                policy="triton", max_batch_size=c, max_queue_delay_ms=d
            )
            for c in caps
            for d in TRITON_DELAYS_MS
        },
        "clipper": {
            f"Clipper AIMD (max {c})": BatchingConfig(policy="clipper", max_batch_size=c)
            for c in caps
        },
        "slo": {
            f"Accordion SLO batcher (max {top})": BatchingConfig(policy="slo", max_batch_size=top)
        },
    }


def factory(config: BatchingConfig, profile_ms: dict[int, float], slo_s: float) -> Factory:
    """A fresh policy as the worker builds it from `config` (`make_policy`)."""
    profile_s = {b: ms / 1000 for b, ms in profile_ms.items()}
    return lambda: make_policy(config, profile_s, slo_s)


def sustainable(
    make: Factory,
    arrivals: Arrivals,
    limit: float,
    slo_s: float,
    latency_s: Callable[[int], float],
    duration_s: float,
    noise: float,
    steps: int = 9,
) -> float:
    """The highest mean rate with >= 99% within the SLO (bisection; the same seeds for all)."""

    def attainment(rate: float) -> float:
        arr = arrivals.schedule(rate, duration_s, seed=1)
        return simulate(make(), arr, slo_s, latency_s, 2, noise).attainment

    lo, hi = 0.0, 1.2 * limit
    for _ in range(steps):
        mid = (lo + hi) / 2
        if attainment(mid) >= TARGET:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass
class Row:
    label: str
    rate: float
    goodput: float


def best_configs(
    arrivals: Arrivals,
    profile_ms: dict[int, float],
    slo_s: float,
    duration_s: float,
    noise: float,
) -> dict[str, list[tuple[float, str, BatchingConfig]]]:
    """Per policy family, its configurations ranked by simulated sustainable rate."""
    latency_s = interpolate(profile_ms)
    limit = physical_limit(profile_ms)
    ranked = {}
    for family, configs in candidates(profile_ms, slo_s).items():
        scored = [
            (
                sustainable(
                    factory(cfg, profile_ms, slo_s), arrivals, limit, slo_s, latency_s,
                    duration_s, noise,
                ),
                label,
                cfg,
            )
            for label, cfg in configs.items()
        ]  # fmt: skip
        ranked[family] = sorted(scored, key=lambda x: -x[0])
    return ranked


def physical_limit(profile_ms: dict[int, float]) -> float:
    """max_b b / L(b) over the profiled range."""
    latency_s = interpolate(profile_ms)
    return max(b / latency_s(b) for b in range(1, max(profile_ms) + 1))


def slo_feasible_limit(profile_ms: dict[int, float], slo_s: float) -> float:
    """max b / L(b) over the batches with 2 L(b) <= SLO (the planner's capacity rule)."""
    latency_s = interpolate(profile_ms)
    fitting = [b for b in range(1, max(profile_ms) + 1) if 2 * latency_s(b) <= slo_s]
    return max((b / latency_s(b) for b in fitting), default=0.0)


def fluid_on_time(arrivals_s: list[float], capacity_qps: float, slo_s: float) -> float:
    """The share of `arrivals_s` that a fluid server of `capacity_qps` finishes within the SLO.

    An upper bound for every batching policy on a device whose peak throughput is
    `capacity_qps` (the physical limit): a batch of b takes at least b / capacity, so a fluid
    server that works at that peak rate all the time, in arrival order (the deadline order:
    one SLO for all), and skips only the requests it cannot finish in time, finishes each
    request no later than any batching schedule could; with equal work per request and
    deadlines in arrival order, skipping the infeasible ones is what maximises the count.
    """
    if not arrivals_s:
        return 1.0
    service_s, free_at, on_time = 1.0 / capacity_qps, 0.0, 0
    for t in sorted(arrivals_s):
        done = max(free_at, t) + service_s
        if done <= t + slo_s:
            free_at, on_time = done, on_time + 1
    return on_time / len(arrivals_s)


def fluid_limit(
    arrivals: Arrivals, capacity_qps: float, slo_s: float, duration_s: float, seed: int = 1
) -> float:
    """The highest mean rate of `arrivals` (the schedule of `seed`) at which the fluid server
    of `fluid_on_time` keeps >= 99% within the SLO: no policy sustains more on these arrivals."""
    lo, hi = 0.0, capacity_qps / TARGET  # beyond it, more than 1% cannot be served at all
    for _ in range(30):
        mid = (lo + hi) / 2
        schedule = arrivals.schedule(mid, duration_s, seed)
        if fluid_on_time(schedule, capacity_qps, slo_s) >= TARGET:
            lo = mid
        else:
            hi = mid
    return lo


def compare(
    arrivals: Arrivals,
    profile_ms: dict[int, float],
    slo_s: float,
    duration_s: float,
    noise: float,
) -> list[Row]:
    """Per policy, its best configuration's sustainable rate and goodput at 2x that rate."""
    latency_s = interpolate(profile_ms)
    rows = []
    for ranked in best_configs(arrivals, profile_ms, slo_s, duration_s, noise).values():
        rate, label, cfg = ranked[0]
        over = simulate(
            factory(cfg, profile_ms, slo_s)(),
            arrivals.schedule(2 * rate, duration_s, 7),
            slo_s,
            latency_s,
            8,
            noise,
        )
        rows.append(Row(label, rate, over.ok / duration_s))
        print(f"  {arrivals.name} noise {noise}: {label}: {rate:.0f}/s, 2x {rows[-1].goodput:.0f}")
    return rows


def parse_profile(text: str) -> dict[int, float]:
    return {int(k): float(v) for k, v in (x.split(":") for x in text.split(","))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slo-ms", type=float, default=300.0)
    parser.add_argument("--profile", default="", help="b:ms,b:ms,... (p50 execution latency)")
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--noise", default="0.1,0.25", help="log-normal sigmas, comma-separated")
    args = parser.parse_args()
    profile_ms = parse_profile(args.profile) if args.profile else DEFAULT_PROFILE_MS
    slo_s = args.slo_ms / 1000
    limit = physical_limit(profile_ms)
    processes = [Arrivals("Poisson")]
    if TRACE.is_file():
        processes.append(Arrivals("Proteus trace (bursty)", tuple(load_proteus_trace())))
    lines = [
        "# Batching policies on simulated time",
        "",
        "`bench/batching/policy_sim.py`: the policy objects the worker runs, driven by "
        "`accordion.workers.batching.replay` on simulated time; execution latency = the "
        "profile (p50 ms, one torch thread: "
        + ", ".join(f"b={b}: {ms:g}" for b, ms in sorted(profile_ms.items()))
        + ") x log-normal noise; "
        f"{args.duration_s:.0f} s of arrivals per point; SLO {args.slo_ms:.0f} ms. Each "
        "baseline at its best configuration (searched: Triton max batch "
        "{4, 8, 16, 24, 32, 48, 64, up to the largest profiled b with L(b) <= SLO} x "
        "max_queue_delay {" + ", ".join(f"{d:g}" for d in TRITON_DELAYS_MS) + "} ms, "
        "Clipper max batch: the same caps); ours at the largest profiled batch with "
        "L(b) <= SLO (its own rule limits batches online); the worker's settings "
        "otherwise (`make_policy`). "
        "Sustainable: highest mean rate with >= 99% within the SLO (bisection). Arrivals: "
        "Poisson, and the Proteus `medium-normal_load` mobilenet trace (Twitter-shaped, "
        "inter-arrival CV 1.8, per-second counts CV 0.77) replayed at the target mean rate.",
        "",
        f"Physical limit max_b b / L(b): **{limit:.0f}/s**. For reference only (not the "
        "goal's yardstick): the best throughput of a batch whose worst case, waiting for the "
        "previous batch and then running (2 L(b)), fits the SLO: "
        f"{slo_feasible_limit(profile_ms, slo_s):.0f}/s.",
    ]
    for arrivals in processes:
        for noise in (float(x) for x in args.noise.split(",")):
            rows = compare(arrivals, profile_ms, slo_s, args.duration_s, noise)
            best = max(r.rate for r in rows if not r.label.startswith("Accordion"))
            lines += [
                "",
                f"## {arrivals.name}, latency noise log-normal sigma {noise}",
                "",
                "| policy (best configuration) | sustainable (/s) | vs best baseline "
                "| of physical limit | goodput at 2x (/s) | goodput at 2x / sustainable |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for r in rows:
                lines.append(
                    f"| {r.label} | {r.rate:.0f} | {r.rate / best:.2f}x | {r.rate / limit:.0%} "
                    f"| {r.goodput:.0f} | {r.goodput / r.rate if r.rate else 0:.0%} |"
                )
    lines += [
        "",
        "Reading: with every baseline at its best configuration, a greedy batcher with a "
        "well-chosen cap is already close to what any policy sustains under Poisson arrivals, "
        "so ours is level with the best baseline there; a 1.3x margin does not exist on this "
        "axis against fairly configured baselines. Deadline awareness pays under overload: "
        "Triton and Clipper never drop, so a backlog makes every later request late and "
        "goodput at 2x collapses to a few percent, while ours sheds what cannot make it and "
        "keeps serving full batches. Under the bursty trace, bursts beyond capacity force "
        "losses on every policy; ours loses little more than the excess, the baselines also "
        "the backlog it leaves behind.",
    ]
    (ROOT / "bench" / "results" / "batching-sim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
