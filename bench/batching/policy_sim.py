"""The batching policies on simulated time: the policy-level comparison without machine noise.

The real-server benchmark (`run.py`) runs on a 2-core machine shared with other work, where a
99%-within-SLO threshold measures the background load as much as the policy. This script
drives the very same policy objects on simulated time (the protocol of
`accordion.workers.batching`), with execution latencies drawn from the model's latency profile
times log-normal noise (fixed seed), so the comparison is repeatable. Same questions as
`run.py`: highest Poisson rate with >= 99% within the SLO, goodput at 2x that rate, and the
physical limit max_b b / L(b).

The default profile is demo-xl's (p50, ms) measured on this machine when it was idle, with one
torch thread; pass another as `--profile 1:7.4,8:25,...`.

Usage: .venv/bin/python bench/batching/policy_sim.py  (writes bench/results/batching-sim.md)
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accordion.workers.batching import (
    BatchingPolicy,
    ClipperAimd,
    LatencyPredictor,
    NoBatching,
    Request,
    SloBatcher,
    TritonDynamicBatcher,
)

ROOT = Path(__file__).resolve().parents[2]
IDLE_DEMO_XL_MS = {1: 7.4, 2: 13.0, 4: 17.0, 8: 25.2, 16: 31.4, 32: 45.4, 64: 92.3}
TARGET = 0.99


def interpolate(profile_ms: dict[int, float]) -> Callable[[int], float]:
    sizes = sorted(profile_ms)

    def latency_s(b: int) -> float:
        i = bisect.bisect_left(sizes, b)
        if i < len(sizes) and sizes[i] == b:
            return profile_ms[b] / 1000
        if i == 0:
            return profile_ms[sizes[0]] / 1000
        if i == len(sizes):
            b0, b1 = sizes[-2], sizes[-1]
        else:
            b0, b1 = sizes[i - 1], sizes[i]
        l0, l1 = profile_ms[b0], profile_ms[b1]
        return (l0 + (l1 - l0) * (b - b0) / (b1 - b0)) / 1000

    return latency_s


@dataclass
class Outcome:
    ok: int = 0
    total: int = 0


def simulate(
    policy: BatchingPolicy,
    rate: float,
    duration_s: float,
    slo_s: float,
    latency_s: Callable[[int], float],
    seed: int,
    noise: float = 0.1,
) -> Outcome:
    rng = random.Random(seed)
    arrivals = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        arrivals.append(t)
    out = Outcome(total=len(arrivals))
    i, now = 0, 0.0
    running: tuple[tuple[Request, ...], float, float] | None = None
    wake: float | None = None
    while i < len(arrivals) or running is not None or policy.queue_depth:
        candidates = [arrivals[i]] if i < len(arrivals) else []
        if running is not None:
            candidates.append(running[2])
        if wake is not None:
            candidates.append(max(wake, now))
        if not candidates:
            break
        now = min(candidates)
        if running is not None and running[2] <= now:
            batch, start, end = running
            policy.complete(len(batch), end - start, now)
            out.ok += sum(end <= r.deadline_s + 1e-12 for r in batch)
            running = None
        while i < len(arrivals) and arrivals[i] <= now:
            policy.enqueue(Request(i, arrivals[i], arrivals[i] + slo_s), now)
            i += 1
        decision = policy.decide(now)
        wake = decision.wake_at_s
        if decision.batch:
            b = len(decision.batch)
            factor = math.exp(rng.gauss(0.0, noise))
            running = (decision.batch, now, now + latency_s(b) * factor)
            wake = None
    return out


def policies(
    cap: int, slo_s: float, profile_ms: dict[int, float]
) -> dict[str, Callable[[], BatchingPolicy]]:
    profile_s = {b: ms / 1000 for b, ms in profile_ms.items() if b <= cap}
    return {
        "no batching": NoBatching,
        f"Triton dynamic batcher (max {cap}, delay 5 ms)": lambda: TritonDynamicBatcher(cap, 0.005),
        f"Clipper AIMD (max {cap})": lambda: ClipperAimd(cap, slo_s),
        f"Accordion SLO batcher (max {cap})": lambda: SloBatcher(
            cap, LatencyPredictor(profile_s), margin_s=0.001
        ),
    }


def sustainable(
    make: Callable[[], BatchingPolicy],
    limit: float,
    slo_s: float,
    latency_s: Callable[[int], float],
    duration_s: float,
    noise: float = 0.1,
) -> float:
    def attainment(rate: float) -> float:
        o = simulate(make(), rate, duration_s, slo_s, latency_s, int(rate), noise)
        return o.ok / max(1, o.total)

    lo, hi = 0.0, 1.2 * limit
    for _ in range(12):
        mid = (lo + hi) / 2
        if attainment(mid) >= TARGET:
            lo = mid
        else:
            hi = mid
    return lo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slo-ms", type=float, default=100.0)
    parser.add_argument("--profile", default="", help="b:ms,b:ms,... (p50 execution latency)")
    parser.add_argument("--duration-s", type=float, default=30.0)
    args = parser.parse_args()
    profile_ms = (
        {int(k): float(v) for k, v in (x.split(":") for x in args.profile.split(","))}
        if args.profile
        else IDLE_DEMO_XL_MS
    )
    slo_s = args.slo_ms / 1000
    latency_s = interpolate(profile_ms)
    limit = max(b / latency_s(b) for b in range(1, max(profile_ms) + 1))
    fitting = [b for b in range(1, max(profile_ms) + 1) if 2 * latency_s(b) <= slo_s]
    cap = max(fitting) if fitting else 1
    lines = [
        "# Batching policies on simulated time",
        "",
        "`bench/batching/policy_sim.py`: the policy objects the worker runs, driven on "
        "simulated time; execution latency = the profile (demo-xl, p50 ms, idle machine, one "
        "torch thread: "
        + ", ".join(f"b={b}: {ms}" for b, ms in sorted(profile_ms.items()))
        + ") x log-normal noise; Poisson arrivals, "
        f"{args.duration_s:.0f} s per point; SLO {args.slo_ms:.0f} ms; batch cap {cap} for every "
        "policy (largest b with 2 L(b) <= SLO). Sustainable: highest rate with >= 99% within "
        "the SLO (bisection).",
        "",
        f"Physical limit max_b b / L(b): **{limit:.0f}/s**.",
    ]
    for noise in (0.1, 0.25):
        rows = []
        for label, make in policies(cap, slo_s, profile_ms).items():
            rate = sustainable(make, limit, slo_s, latency_s, args.duration_s, noise)
            over = simulate(make(), 2 * rate, args.duration_s, slo_s, latency_s, 7, noise)
            goodput = over.ok / args.duration_s
            rows.append((label, rate, goodput))
            print(f"{noise} {label}: sustainable {rate:.0f}/s, goodput at 2x {goodput:.0f}/s")
        best = max(r for label, r, _ in rows if not label.startswith("Accordion"))
        lines += [
            "",
            f"Latency noise: log-normal, sigma {noise}.",
            "",
            "| policy | sustainable (/s) | vs best baseline | of physical limit "
            "| goodput at 2x (/s) | goodput at 2x / sustainable |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for label, rate, goodput in rows:
            lines.append(
                f"| {label} | {rate:.0f} | {rate / best:.2f}x | {rate / limit:.0%} "
                f"| {goodput:.0f} | {goodput / rate if rate else 0:.0%} |"
            )
    (ROOT / "bench" / "results" / "batching-sim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
