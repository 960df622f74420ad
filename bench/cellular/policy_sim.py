"""The staged schedulers on simulated time, on latency profiles measured in this run.

The same scheduler objects the worker runs (`CellularScheduler`, `NodeScheduler`, and the
request-level baselines `RequestLevelScheduler` over `SloBatcher` and Triton's dynamic batcher),
driven by `replay_staged` with each stage's execution time drawn from the profile measured here
(`stagedworker.profile_stages`, one torch thread: per batch size, a random one of the measured
runs). No HTTP, no event loop: what the schedulers do when the model is the only cost. The live
benchmark (run.py) is the one that counts; this one says what the machine's noise and the
HTTP work take from it.

Usage: .venv/bin/python bench/cellular/policy_sim.py  (results: bench/results/cellular-sim.md)
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.workers.batching import LatencyPredictor, SloBatcher, TritonDynamicBatcher
from accordion.workers.cellular import CellularScheduler
from accordion.workers.lazy import NodeScheduler
from accordion.workers.staged import (
    Job,
    RequestLevelScheduler,
    StageLatency,
    StageScheduler,
    replay_staged,
)
from accordion.workers.stagedworker import profile_stages, stage_profile_s
from bench.cellular.run import (
    MAX_BATCHES,
    STEP_SIZES,
    TRITON_GRID,
    batch_longest,
    bursty,
    decoder_lengths,
    gru_lengths,
    poisson,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
SIZES = [1, 2, 4, 8, 16, 32, 64]
TARGET = 0.99


def measured(model_name: str, sizes: list[int] = SIZES) -> tuple[list[dict[int, list[float]]], int]:
    import torch

    from accordion.workers.seqmodels import STAGED_BUILTINS

    torch.set_num_threads(1)
    model = STAGED_BUILTINS[model_name]()
    return profile_stages(model, sizes, repeats=4), model.stages


def simulate(
    make: Callable[[], StageScheduler],
    runs: list[dict[int, list[float]]],
    arrivals: list[float],
    steps: list[int],
    slo_s: float,
) -> tuple[float, float]:
    rng = random.Random(5)

    def latency(stage: int, size: int) -> float:
        table = runs[stage % len(runs)]
        below = max(b for b in table if b <= size) if size >= min(table) else min(table)
        above = min((b for b in table if b >= size), default=max(table))
        lo, hi = rng.choice(table[below]), rng.choice(table[above])
        if above == below:
            return lo if size <= above else lo * size / above
        return lo + (hi - lo) * (size - below) / (above - below)

    jobs = [Job(i, t, t + slo_s, n) for i, (t, n) in enumerate(zip(arrivals, steps, strict=False))]
    out = replay_staged(make(), jobs, latency)
    response = sorted(out.response_s + [float("inf")] * out.dropped)
    late = [r for r in response if r > slo_s]
    p99 = response[min(len(response) - 1, int(0.99 * len(response)))]
    return 1 - len(late) / len(response), p99 * 1000


def sustainable(sim: Callable[[float], tuple[float, float]], start: float) -> float:
    good, bad, rate = 0.0, None, start
    while bad is None and rate < 1e5:
        if sim(rate)[0] >= TARGET:
            good, rate = rate, rate * 1.5
        else:
            bad = rate
    lo, hi = good, bad or rate
    for _ in range(6):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sim(mid)[0] >= TARGET else (lo, mid)
    return lo


def sequence_section(model_name: str, title: str, lengths: list[int], slo: float) -> list[str]:
    """Cellular against the live benchmark's request-level configurations on one sequence
    model: every configuration's sustainable rate by the same search, and p99 at the best
    baseline's rate."""
    runs, _ = measured(model_name, list(STEP_SIZES))
    profile = stage_profile_s(runs)
    longest = batch_longest(lengths)

    def cellular(mb: int) -> Callable[[], StageScheduler]:
        return lambda: CellularScheduler(StageLatency(profile), max_batch_size=mb)

    def slo_batcher(mb: int, steps: Callable[[int], float]) -> Callable[[], StageScheduler]:
        predictor = LatencyPredictor({b: steps(b) * v for b, v in profile[0].items()})
        return lambda: RequestLevelScheduler(SloBatcher(mb, predictor, margin_s=0.002))

    def triton(mb: int, delay_ms: float) -> Callable[[], StageScheduler]:
        return lambda: RequestLevelScheduler(TritonDynamicBatcher(mb, delay_ms / 1000))

    # the live benchmark's configurations (run.py), the same search for all
    configs: dict[str, Callable[[], StageScheduler]] = {
        f"cellular (ours, max batch {mb})": cellular(mb) for mb in MAX_BATCHES
    }
    for mb in MAX_BATCHES:
        configs[f"request-level SloBatcher (max batch {mb})"] = slo_batcher(mb, lambda b: 64)
    configs["request-level SloBatcher (max batch 32, profile at the lengths)"] = slo_batcher(
        32, lambda b: longest.get(b, longest[max(longest)])
    )
    for mb, delay in TRITON_GRID:
        configs[f"request-level Triton (max batch {mb}, delay {delay:g} ms)"] = triton(mb, delay)

    def sim_seq(make: Callable[[], StageScheduler]) -> Callable[[float], tuple[float, float]]:
        return lambda rate: simulate(make, runs, poisson(rate, 3000 / rate, 3), lengths, slo)

    rates = {label: sustainable(sim_seq(make), 20.0) for label, make in configs.items()}
    best = max((k for k in rates if not k.startswith("cellular")), key=rates.__getitem__)
    lines = [
        f"## {title}",
        "",
        "| configuration | sustainable rate (req/s) | p99 at the best baseline's rate (ms) |",
        "|---|---:|---:|",
    ]
    p99s = {label: sim_seq(make)(rates[best])[1] for label, make in configs.items()}
    for label in configs:
        lines.append(f"| {label} | {rates[label]:.0f} | {p99s[label]:.0f} |")
    ours = max((k for k in rates if k.startswith("cellular")), key=rates.__getitem__)
    lines += [
        "",
        f"Cellular at its best ({ours}) / best baseline ({best}): "
        f"{rates[ours] / rates[best]:.2f}x the rate; p99 at {rates[best]:.0f} req/s "
        f"{p99s[best] / p99s[ours]:.2f}x lower.",
        "",
    ]
    return lines


def main() -> None:
    lines = [
        "# Staged batching on simulated time (bench/cellular/policy_sim.py)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Stage latencies: runs "
        "measured in this run on this machine (one torch thread); the same scheduler objects "
        "as the worker; no HTTP. Sustainable rate: the highest Poisson rate with >= 99% "
        "within the SLO (bisection).",
        "",
    ]
    lengths = gru_lengths(3000, seed=7)
    lines += sequence_section(
        "gru-seq",
        f"gru-seq, lengths lognormal median 40, sigma 1.1, in 2..768 (mean "
        f"{np.mean(lengths):.1f}, p99 {np.percentile(lengths, 99):.0f}), SLO 1000 ms",
        lengths,
        1.0,
    )
    prompts, outputs = decoder_lengths(np.random.default_rng(9), 3000)
    steps = [int(x) for x in prompts + outputs - 1]
    lines += sequence_section(
        "decoder-tiny",
        "decoder-tiny, prompts lognormal median 16, outputs lognormal median 24, sigma 1.1, "
        f"<= 384 (steps: mean {np.mean(steps):.1f}, p99 {np.percentile(steps, 99):.0f}; the "
        "step's cost per batch size as profiled, whatever the contexts), SLO 2000 ms",
        steps,
        2.0,
    )

    runs_cnn, stages = measured("cnn-deep")
    prof_cnn = stage_profile_s(runs_cnn)
    whole = {b: sum(p[b] for p in prof_cnn) for b in SIZES}
    slo = 0.1
    cnn_configs: dict[str, Callable[[], StageScheduler]] = {
        "node-level (ours)": lambda: NodeScheduler(
            StageLatency(prof_cnn), stages, max_batch_size=16
        ),
        "request-level SloBatcher": lambda: RequestLevelScheduler(
            SloBatcher(16, LatencyPredictor(whole), margin_s=0.002), stages
        ),
    }
    lines += [
        "## cnn-deep (10 stages), SLO 100 ms",
        "",
        "| arrivals | configuration | sustainable rate (req/s) | attainment at the "
        "request-level rate |",
        "|---|---|---:|---:|",
    ]
    for name, arrivals in (("Poisson", poisson), ("bursty", bursty)):

        def sim_cnn(
            make: Callable[[], StageScheduler], arrivals: Callable[..., list[float]] = arrivals
        ) -> Callable[[float], tuple[float, float]]:
            return lambda rate: simulate(
                make, runs_cnn, arrivals(rate, 2000 / rate, 3), [stages] * 5000, slo
            )

        r = {label: sustainable(sim_cnn(make), 50.0) for label, make in cnn_configs.items()}
        base = r["request-level SloBatcher"]
        for label, make in cnn_configs.items():
            att = sim_cnn(make)(base)[0]
            lines.append(f"| {name} | {label} | {r[label]:.0f} | {100 * att:.2f}% |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cellular-sim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
