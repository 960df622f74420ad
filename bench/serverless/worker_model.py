"""The batching model's predicted p99 against a real worker and against the simulator.

For each arrival pattern (Poisson, and bursty: a Poisson stream whose rate is held for 0.5 s
phases at gamma-distributed levels around the mean) and each of 3+ rates:

* **real worker**: an ``accordion-worker serve`` process (torch on CPU, ``builtin:demo-xl``, the
  SLO batcher with its defaults, batch cap `CAP`) on loopback, driven open-loop by the load
  generator (`loadgen.run_load`) with that schedule; measured p99 of the answered requests'
  latency (the client's view: HTTP and decoding included);
* **simulator**: the same batcher replayed on simulated time (`batching.replay`, as the
  simulator's replicas run it) with execution times drawn from the model's own distribution
  of the same profile (`queueing.Execution`: p50, p90, p99 per size; the simulator's
  `engine.dist_quantile` reads p50 and p90 only), on the arrivals the worker saw: each
  request's actual send time (`LoadReport.sent_at_s`; the generator shares the machine, so
  how late it sent against the schedule is reported per row, `send_late_ms`: p50, p99, max);
* **model**: `queueing.latency_quantile_s` at the sent arrivals' rate and the burstiness the
  router's own meter (`dispersion.DispersionMeter`) reads from them, for bursty rows with the
  queue carried across the generator's phases (`PHASE_S`, known here: the router does not
  measure it; the quasi-static model, the planner's, is reported beside it) and the rate's
  variance those phases have (the meter's reading over the share of it its 2-s blocks see,
  `dispersion.variance_share`: 0.74 for fixed 0.5-s phases), with the overhead
  of the worker's HTTP path (`profiler.measure_overhead`, measured on the same worker before
  the runs: a lone batch's execution beyond the profile's, for a batch that starts on an idle
  device; a lone request's round trip beyond its execution; the work per request a saturated
  worker's batches wait for). Its service times are **the profile the product holds before
  the rows** (`served.held_profile`): ``accordion profile`` of every batch size up to the cap
  (`SIZES`, taken alone in its own process at the start), corrected by the worker's own
  executions while it served the overhead's probes and then a warm-up at a low rate (the
  `ServedProfile` it publishes on /metrics), the overhead split against that profile
  (`Overhead.against`). Beside it, the model at the profile taken alone (what it predicted
  before the served profile), and, to split the error, the model and the replay at **the
  row's own executions** (the served profile read after the row): the model against the
  replay at the same inputs is the queueing model's error, the replay at the row's
  executions against the worker what the service times do not explain.

The simulator's replay gets the same profile and overhead as the model it is compared with
(`IdleTracking`). Each row also gives the worker's own mean batch and execution in that run
against the profile's and the held profile's at that size, and the replay's p99 on
`SPREAD_SEEDS` fresh draws of the row's generator (min, median, max: how much one run's
p99 varies).

Run: ``flock /tmp/accordion-heavy.lock .venv/bin/python bench/serverless/worker_model.py``
(writes bench/results/serverless_model.json, read by report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from accordion.solver import Burstiness, ProfilePoint
from accordion.solver.queueing import (
    Execution,
    RequestOverhead,
    latency_quantile_s,
    profile_key,
)
from accordion.workers.batching import Decision, LatencyPredictor, Request, SloBatcher, replay
from accordion.workers.dispersion import BIN_S, DispersionMeter, variance_share
from accordion.workers.loadgen import build_body, poisson_schedule, run_load
from accordion.workers.profiler import Overhead, batch_counters, measure_overhead
from accordion.workers.served import Point, held_profile, parse_served

RESULTS = Path(__file__).resolve().parents[1] / "results"
WORKER = [sys.executable, "-m", "accordion.workers"]
MODEL = "demo-xl"
CAP = 8
SIZES = tuple(range(1, CAP + 1))
"""Every batch size is profiled: on CPU the device's curve is not linear between powers of two
(demo-xl, 23:40 UTC: a batch of 3 ran in 7.0-8.0 ms, as fast as one of 2, where the line
between 2 (7.2 ms) and 4 (14.4 ms) says 10.8 ms), and the model and the replay take the
profile as the device's truth."""
PHASE_S = 0.5
BURST_CV2 = 0.1
SPREAD_SEEDS = 8
"""Fresh draws of each row's generator the replay runs on, for the spread of a run's p99."""


def bursty_schedule(rate: float, cv2: float, duration_s: float, seed: int) -> list[float]:
    """Poisson at a gamma-distributed rate (mean `rate`, squared CV `cv2`) held for phases of
    `PHASE_S`, the first cut at a random point (a router's counting bins are not aligned with
    a burst's phases; `dispersion.variance_share` assumes they are not)."""
    rng = random.Random(seed)
    shape = 1.0 / cv2
    t, out = 0.0, []
    end = rng.uniform(0.0, PHASE_S)
    while t < duration_s:
        level = rate * rng.gammavariate(shape, 1.0 / shape)
        end = min(duration_s, end)
        while level > 0:
            t += rng.expovariate(level)
            if t >= end:
                break
            out.append(t)
        t, end = end, end + PHASE_S
    return out


def burstiness(schedule: list[float]) -> tuple[float, float]:
    """(index of dispersion, cv2) of a schedule, as the router's meter reads them (over the
    whole schedule)."""
    value = DispersionMeter.of(schedule, window_s=schedule[-1] + 1.0).value()
    assert value is not None
    dispersion, rate = value
    return dispersion, Burstiness(dispersion=dispersion, rate_qps=rate, window_s=BIN_S).rate_cv2


def worker_counters(url: str) -> np.ndarray:
    """The worker's (batches, requests in them, execution seconds) so far, from /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        counters = batch_counters(resp.read().decode())
    return np.array(
        [
            counters.get("accordion_worker_batch_size_count", 0.0),
            counters.get("accordion_worker_batch_size_sum", 0.0),
            counters.get("accordion_worker_execution_latency_seconds_sum", 0.0),
        ]
    )


def served(url: str) -> dict[int, Point]:
    """The worker's served profile now (`accordion.workers.served`, from /metrics): batch size
    -> (p50, p90, p99) of its last executions, sizes with enough of them."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {b: point for b, (_, point) in parse_served(text).items()}


def as_points(profile: dict[int, Point]) -> list[ProfilePoint]:
    return [
        ProfilePoint(batch_size=b, p50_s=p50, p90_s=p90, p99_s=p99)
        for b, (p50, p90, p99) in sorted(profile.items())
    ]


def base_of(points: list[ProfilePoint]) -> dict[int, Point]:
    return {
        p.batch_size: (p.p50_s, p.p90_s or p.p50_s, p.p99_s or p.p90_s or p.p50_s) for p in points
    }


def request_overhead(measured: Overhead, points: list[ProfilePoint]) -> RequestOverhead:
    """The path's overhead split against `points` (`Overhead.against`)."""
    split = measured.against({p.batch_size: p.p50_s for p in points})
    return RequestOverhead(
        fixed_s=split.fixed_s, per_request_s=split.per_request_s, cold_batch_s=split.cold_batch_s
    )


def model_p99_ms(
    points: list[ProfilePoint],
    overhead: RequestOverhead,
    phase_s: float | None,
    *,
    rate_qps: float,
    cv2: float,
) -> float:
    """The model's p99 (ms) at `points` with `overhead`."""
    return latency_quantile_s(points, CAP, rate_qps, cv2, 0.99, overhead, phase_s) * 1000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def profile() -> list[ProfilePoint]:
    """`accordion profile` of the model (the block a user pastes into the variant)."""
    sizes = ",".join(str(b) for b in SIZES)
    out = subprocess.run(
        [*WORKER, "profile", "--model", f"builtin:{MODEL}", "--batch-sizes", sizes],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    block = yaml.safe_load(out[out.index("profiles:") :])
    return [
        ProfilePoint(
            batch_size=b["batchSize"],
            p50_s=b["p50Ms"] / 1000.0,
            p90_s=b["p90Ms"] / 1000.0,
            p99_s=b["p99Ms"] / 1000.0,
        )
        for b in block["profiles"][0]["batches"]
    ]


class IdleTracking(SloBatcher):
    """The SLO batcher, noting whether the batch it starts finds the device idle (no batch
    completed at this instant, nor running): such a batch runs `cold_batch_s` longer."""

    def __init__(self, cap: int, predictor: LatencyPredictor) -> None:
        super().__init__(cap, predictor)
        self.now_s = 0.0
        self.free_since_s = -math.inf

    def decide(self, now_s: float) -> Decision:
        self.now_s = now_s
        return super().decide(now_s)

    def complete(self, batch_size: int, latency_s: float, now_s: float) -> None:
        self.free_since_s = now_s
        super().complete(batch_size, latency_s, now_s)

    @property
    def idle(self) -> bool:
        return self.now_s > self.free_since_s


def simulated_p99(
    points: list[ProfilePoint], schedule: list[float], seed: int, overhead: RequestOverhead
) -> tuple[float, list[int]]:
    """The replay's p99 (seconds) and the sizes of its batches. Each batch's execution is
    drawn from the model's own distribution of it (`queueing.Execution`: the profile's p50,
    p90 and p99 per size, the per-request work in it), so that the model and the replay have
    the same inputs and differ only by the queueing."""
    rng = random.Random(seed)
    ex = Execution.of(profile_key(points), CAP, overhead.per_request_s, overhead.cold_batch_s)
    cumulative = np.cumsum(ex.probs)

    predictor = LatencyPredictor({p.batch_size: p.p50_s for p in points})
    policy = IdleTracking(CAP, predictor)

    def execution_s(b: int) -> float:
        j = min(int(np.searchsorted(cumulative, rng.random())), len(cumulative) - 1)
        return float(ex.values_s[b - 1, j]) + (ex.cold_s if policy.idle else 0.0)

    requests = [Request(i, a, a + 10.0) for i, a in enumerate(schedule)]
    out = replay(policy, requests, execution_s)
    return float(np.percentile(out.response_s, 99)) + overhead.fixed_s, out.batch_sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration-s",
        type=float,
        default=40.0,
        help="seconds per row (longer rows did not bring the model closer here: at 120 s the "
        "top bursty row's replay on fresh draws still spread 72-141 ms, and every row met "
        "stalls of the machine, the generator up to 60-142 ms late)",
    )
    parser.add_argument(
        "--poisson",
        default="0.3,0.5,0.7",
        help="rates, as fractions of the saturated worker's answers per second",
    )
    parser.add_argument("--bursty", default="0.2,0.35,0.5", help="the same, bursty")
    parser.add_argument("--out", type=Path, default=RESULTS / "serverless_model.json")
    args = parser.parse_args()
    points = profile()
    print("profile", [(p.batch_size, p.p50_s, p.p90_s, p.p99_s) for p in points], flush=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    worker = subprocess.Popen(
        [
            *WORKER,
            *("serve", "--model", f"builtin:{MODEL}", "--port", str(port)),
            *("--slo-ms", "10000", "--max-batch-size", str(CAP), "--threads", "1"),
        ],
        start_new_session=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        body = build_body("input", "FP32", [256])
        # Warm-up: the batcher's online correction learns the machine's speed.
        asyncio.run(
            run_load(url, MODEL, poisson_schedule(100.0, 5.0, 99), slo_ms=10000.0, body=body)
        )
        measured_overhead = asyncio.run(
            measure_overhead(
                url, MODEL, body, cap=CAP, profile_s={p.batch_size: p.p50_s for p in points}
            )
        )
        print("overhead", measured_overhead, flush=True)
        overhead = request_overhead(measured_overhead, points)
        # A warm-up at a low rate (30% of the saturated throughput, 10 s), after the probes:
        # the executions of a worker that serves, the last in its served window.
        low = poisson_schedule(0.3 * measured_overhead.saturated_qps, 10.0, 98)
        asyncio.run(run_load(url, MODEL, low, slo_ms=10000.0, body=body))
        # The profile the product holds now, after the overhead's probes (lone requests, a
        # saturated spell) and the warm-up at a low rate: the worker's executions as served, per
        # batch size, the profile's scaled for sizes it has not run enough of
        # (`served.held_profile`). The model is given this one, not the rows' own.
        held_served = served(url)
        held = as_points(held_profile(base_of(points), held_served))
        held_overhead = request_overhead(measured_overhead, held)
        print("held", sorted(held_served), [(p.batch_size, p.p50_s) for p in held], flush=True)
        print("held overhead", held_overhead, flush=True)
        # Rates as fractions of what the worker's HTTP path answered saturated, measured now
        # (the profile's cap / p50(cap) is the device's alone: rates near it overload the path,
        # and the planner never plans at the knee).
        top = measured_overhead.saturated_qps
        cases = [("poisson", top * float(r)) for r in args.poisson.split(",")] + [
            ("bursty", top * float(r)) for r in args.bursty.split(",")
        ]
        for k, (kind, rate) in enumerate(cases):
            seed = 10 + k
            if kind == "poisson":
                make = partial(poisson_schedule, duration_s=args.duration_s)
            else:
                make = partial(bursty_schedule, cv2=BURST_CV2, duration_s=args.duration_s)
            schedule = make(rate, seed=seed)
            before = worker_counters(url)
            report = asyncio.run(run_load(url, MODEL, schedule, slo_ms=10000.0, body=body))
            batches, batched, executed = (float(v) for v in worker_counters(url) - before)
            # The row's own executions, per batch size (the last `ServedProfile.window` of
            # each: this row's for the sizes it ran often, earlier rows' for rare ones).
            own_served = served(url)
            own = as_points(held_profile(base_of(points), own_served))
            own_overhead = request_overhead(measured_overhead, own)
            # The arrivals the worker saw: when each request left, not when it was due (the
            # generator shares the machine and falls behind in bursts); the router's meter
            # would count these.
            sent = sorted(report.sent_at_s)
            dispersion, meter_cv2 = burstiness(sent)
            scheduled_dispersion, scheduled_cv2 = burstiness(schedule)
            offered = len(sent) / args.duration_s
            measured = report.percentile_ms(99)
            phase_s = PHASE_S if kind == "bursty" else None
            # The meter reads the variance within its 2-s blocks: of fixed 0.5-s phases, 0.74
            # of the rate's (`variance_share`). The model of those phases is given the rate's;
            # the quasi-static model beside it (the planner's, which knows no phase length)
            # the meter's reading as it is.
            cv2 = meter_cv2 / variance_share(PHASE_S) if phase_s else meter_cv2
            model_ms = partial(model_p99_ms, rate_qps=offered, cv2=cv2)

            predicted = model_ms(held, held_overhead, phase_s)
            quasi_static = model_p99_ms(held, held_overhead, None, rate_qps=offered, cv2=meter_cv2)
            alone = model_ms(points, overhead, phase_s)
            own_model = model_ms(own, own_overhead, phase_s)
            # The same batcher replayed on the same sent times with the same inputs as the
            # model (the simulator's draws through each size's p50 and p90): the model's own
            # error is against this; the replay at the row's executions against the worker is
            # what the service times alone do not explain.
            simulated = simulated_p99(held, sent, seed, held_overhead)[0] * 1000.0
            own_replay = simulated_p99(own, sent, seed, own_overhead)[0] * 1000.0
            # How much a row's p99 varies at this rate: the replay on fresh draws of the same
            # generator (a few phases far above the mean decide a bursty p99).
            spread = sorted(
                simulated_p99(held, make(rate, seed=seed + 100 * j), seed + j, held_overhead)[0]
                * 1e3
                for j in range(1, SPREAD_SEEDS + 1)
            )

            def rounded(value: float) -> float | None:
                return round(value, 2) if math.isfinite(value) else None

            row = {
                "arrivals": kind,
                "rate_qps": round(offered, 1),
                "dispersion": round(dispersion, 3),
                "cv2": round(cv2, 4),
                "meter_cv2": round(meter_cv2, 4),
                "scheduled_dispersion": round(scheduled_dispersion, 3),
                "scheduled_cv2": round(scheduled_cv2, 4),
                "send_late_ms": [round(report.lateness_ms(q), 2) for q in (50, 99, 100)],
                # The worker's own batches in the run (its execution metric: the device's
                # part, without the event loop's), against the profile's and the held
                # profile's p50 at that mean size.
                "worker_batch": round(batched / batches, 2),
                "worker_execution_ms": round(executed / batches * 1e3, 2),
                "profile_execution_ms": round(
                    float(np.interp(batched / batches, SIZES, [p.p50_s for p in points])) * 1e3, 2
                ),
                "held_execution_ms": round(
                    float(np.interp(batched / batches, SIZES, [p.p50_s for p in held])) * 1e3, 2
                ),
                "own_profile_ms": [
                    [p.batch_size, round(p.p50_s * 1e3, 2), round((p.p90_s or 0) * 1e3, 2)]
                    for p in own
                ],
                "own_served_sizes": sorted(own_served),
                "measured_p99_ms": round(measured, 2),
                "simulated_p99_ms": round(simulated, 2),
                "replay_spread_ms": [
                    round(spread[0], 2),
                    round(spread[len(spread) // 2], 2),
                    round(spread[-1], 2),
                ],
                "predicted_p99_ms": rounded(predicted),
                "phase_s": phase_s,
                "quasi_static_p99_ms": rounded(quasi_static),
                "profile_model_p99_ms": rounded(alone),
                "own_model_p99_ms": rounded(own_model),
                "own_replay_p99_ms": rounded(own_replay),
                "error_vs_worker": round(predicted / measured - 1, 4),
                "error_vs_simulator": round(predicted / simulated - 1, 4),
                "failed": report.failed,
                "sent": report.sent,
            }
            rows.append(row)
            print(row, flush=True)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    args.out.write_text(
        json.dumps(
            {
                "model": MODEL,
                "cap": CAP,
                "duration_s": args.duration_s,
                "overhead_ms": {
                    "fixed": round(overhead.fixed_s * 1e3, 3),
                    "per_request": round(overhead.per_request_s * 1e3, 3),
                    "cold_batch": round(overhead.cold_batch_s * 1e3, 3),
                    "lone_latency": round(measured_overhead.lone_latency_s * 1e3, 3),
                    "lone_execution": round(measured_overhead.lone_execution_s * 1e3, 3),
                    "saturated_qps": round(measured_overhead.saturated_qps, 1),
                    "saturated_batch": round(measured_overhead.saturated_batch, 2),
                },
                "held_overhead_ms": {
                    "fixed": round(held_overhead.fixed_s * 1e3, 3),
                    "per_request": round(held_overhead.per_request_s * 1e3, 3),
                    "cold_batch": round(held_overhead.cold_batch_s * 1e3, 3),
                },
                "profile_ms": [
                    [p.batch_size, p.p50_s * 1e3, (p.p90_s or 0) * 1e3, (p.p99_s or 0) * 1e3]
                    for p in points
                ],
                "held_profile_ms": [
                    [p.batch_size, p.p50_s * 1e3, (p.p90_s or 0) * 1e3, (p.p99_s or 0) * 1e3]
                    for p in held
                ],
                "held_served_sizes": sorted(held_served),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
