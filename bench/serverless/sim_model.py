"""The batching model's predicted p99 against the simulator's replicas, Poisson and bursty.

The worker's `SloBatcher` replayed on simulated time (`batching.replay`, what each simulated
replica runs), execution times drawn as the simulator draws them (`engine.dist_quantile` through
the profile's p50 and p90), arrivals Poisson or bursty (Poisson at a gamma-distributed rate held
for 0.5 s phases), four seeds of 50,000 requests per point. The profile is ``builtin:demo-xl`` on
this machine's CPU as ``accordion profile`` measured it once (batch 1-16, p50/p90 ms below),
its p99 the simulator's own. The model (`queueing.latency_quantile_s`) gets the rate and the
cv2 the router's meter (`dispersion.DispersionMeter`) reads from the same arrivals.

    flock /tmp/accordion-heavy.lock .venv/bin/python bench/serverless/sim_model.py
"""

from __future__ import annotations

import json
import random
from functools import partial
from pathlib import Path

import numpy as np

from accordion.sim.engine import dist_quantile
from accordion.solver import Burstiness, ProfilePoint
from accordion.solver.queueing import latency_quantile_s
from accordion.workers.batching import LatencyPredictor, Request, SloBatcher, replay
from accordion.workers.dispersion import BIN_S, DispersionMeter

RESULTS = Path(__file__).resolve().parents[1] / "results"
# demo-xl on this machine's CPU, one thread (accordion profile, a quiet moment): ms.
P50_MS = {1: 6.677, 2: 7.501, 4: 14.24, 8: 21.34, 16: 25.039}
P90_MS = {1: 7.083, 2: 7.74, 4: 15.327, 8: 22.485, 16: 26.164}
CAP = 16
PHASE_S = 0.5


def points() -> list[ProfilePoint]:
    return [
        ProfilePoint(
            batch_size=b,
            p50_s=P50_MS[b] / 1e3,
            p90_s=P90_MS[b] / 1e3,
            p99_s=dist_quantile(P50_MS[b], P90_MS[b], 0.99) / 1e3,
        )
        for b in P50_MS
    ]


def arrivals(rate: float, cv2: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, list[float]()
    while len(out) < n:
        level = rate * rng.gammavariate(1 / cv2, cv2) if cv2 > 0 else rate
        end = t + PHASE_S
        while True:
            t += rng.expovariate(level)
            if t >= end:
                t = end
                break
            out.append(t)
    return out[:n]


def execution_s(rng: random.Random, batch_size: int) -> float:
    sizes = sorted(P50_MS)
    p50 = float(np.interp(batch_size, sizes, [P50_MS[b] for b in sizes])) / 1e3
    p90 = float(np.interp(batch_size, sizes, [P90_MS[b] for b in sizes])) / 1e3
    return dist_quantile(p50, p90, rng.random())


def cv2_of(times: list[float]) -> float:
    value = DispersionMeter.of(times).value()
    assert value is not None
    return Burstiness(dispersion=value[0], rate_qps=value[1], window_s=BIN_S).rate_cv2


def main() -> None:
    throughput = CAP / (P50_MS[CAP] / 1e3)
    rows = []
    for kind, cv2, fractions in (
        ("poisson", 0.0, (0.3, 0.55, 0.75, 0.85)),
        ("bursty", 0.1, (0.15, 0.3, 0.45)),
        ("bursty", 0.3, (0.1, 0.2, 0.3)),
    ):
        for fraction in fractions:
            rate = fraction * throughput
            response: list[float] = []
            measured_cv2 = []
            for seed in range(1, 5):
                times = arrivals(rate, cv2, 50_000, seed)
                measured_cv2.append(cv2_of(times))
                requests = [Request(i, a, a + 10.0) for i, a in enumerate(times)]
                predictor = LatencyPredictor({b: P50_MS[b] / 1e3 for b in P50_MS})
                out = replay(
                    SloBatcher(CAP, predictor), requests, partial(execution_s, random.Random(seed))
                )
                response += out.response_s
            simulated = float(np.percentile(response, 99)) * 1e3
            seen = float(np.mean(measured_cv2))
            predicted = latency_quantile_s(points(), CAP, rate, seen, 0.99) * 1e3
            row = {
                "arrivals": kind,
                "cv2": cv2,
                "measured_cv2": round(seen, 4),
                "rate_qps": round(rate, 1),
                "utilization": fraction,
                "simulated_p99_ms": round(simulated, 2),
                "predicted_p99_ms": round(predicted, 2),
                "error": round(predicted / simulated - 1, 4),
            }
            rows.append(row)
            print(row, flush=True)
    (RESULTS / "serverless_sim_model.json").write_text(
        json.dumps({"cap": CAP, "p50_ms": P50_MS, "p90_ms": P90_MS, "rows": rows}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
