"""Cellular and node-level batching against request-level batching: one worker, one load.

The same worker server (a process per configuration, `python -m accordion.workers serve`, real
HTTP, KServe v2 binary tensors, one torch thread), the same open-loop load from this process:

* variable-length sequences: builtin:gru-seq (GRU, hidden 512), request lengths drawn from a
  lognormal (median 40 steps, sigma 1.1, in 2..768), SLO 1000 ms; builtin:decoder-tiny
  (prompts and outputs lognormal, medians 16 and 24 tokens), SLO 2000 ms. Configurations:
  ``mode: cellular`` (ours, per-step batching) against the request-level baselines on the
  same model (a batch of whole requests runs until its longest member finishes; nobody joins
  meanwhile): our SloBatcher, and Triton's dynamic batcher swept over max batch x max queue
  delay (best kept);
* a feed-forward model: builtin:cnn-deep (10 conv stages), SLO 100 ms, Poisson and bursty
  (3x the mean rate a fifth of the time, in 0.5-s slots; `bursty`) arrivals:
  ``mode: node`` (LazyBatching) against the request-level SloBatcher (the product's default).

All configurations of a workload run at once (one idle worker process each) and are measured
by one search, the same for all: a geometric ladder of rates, interleaved rate by rate so the
machine's background load hits all alike (a configuration leaves it after two failures in a
row), then bisection between each one's highest pass and lowest failure. Noise rule (every
measurement): a measurement below 99% is repeated at once with other arrivals, and counts as
failed only if the repeat fails too (the better of the two counts); a stall of the shared
machine hits one measurement, an unsustainable rate both. Every miss is logged by its outcome
at the worker (dropped, with the reason; late; rejected; late only at the client). Per
configuration: the sustainable rate (the highest rate measured with >= 99% of requests
answered within the SLO at the client); then every configuration measured again at the best
request-level baseline's sustainable rate, three rounds interleaved, the median round counting
(attainment and p99 at equal rate; every round is in the JSON and the report).
Results: bench/results/cellular.md (bench/cellular/report.py renders it from cellular.json).

Usage: flock /tmp/accordion-heavy.lock .venv/bin/python bench/cellular/run.py [--quick]

On a GPU machine: ``--device cuda --out DIR`` runs every worker (and the step profiles) on the
GPU and writes cellular.json and the log to DIR as it goes (bench/gpu/check.sh; a GPU run's
results are not merged into bench/results/cellular.json, which holds the CPU runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.workers.config import (
    BINARY_HEADER,
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    BatchingConfig,
    WorkerConfig,
)
from bench.batching.run import free_port, serve_worker
from bench.cellular.report import filter_terms

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TARGET = 0.99
STEP = 1.25  # the sequence search's ladder: x1.25 per rung
MAX_RATE = 2000.0
BISECT = 2  # bisection rounds after the ladder: the rate within ~6%
CONFIRM_ROUNDS = 3
"""Measurements of every configuration at its sustainable rate once the search has found it,
interleaved round by round, each `EQUAL_RATE_S` long; the median round counts
(`confirmation`). A single 6-s pass at a knife edge made a rate: Triton's 567.5 req/s on
gru-seq (2026-12-06 13:20 run) passed once (99.1%) and held 41-58% in each of three 10-s rounds
there. The rounds were 6 s (the search's) until 2026-12-06 21:20 UTC: a request-level batcher
on decoder-tiny is bistable near its knee (a batch of 256 whose longest member runs ~1 s lets
the next batch form from a second of arrivals; one slow batch and the queue never drains), so
it passed 293 req/s once in a 6-s repeat (99.6%, the first try 36.7%) and held 87/43/34% in
three 6-s rounds there (21:12 UTC probe); a rate that holds for a few of its batches is not
sustained. 10 s is also the length of the equal-rate rounds."""
EQUAL_RATE_S = 10.0
EQUAL_ROUNDS = 3
"""Measurements of every configuration at equal rate, interleaved round by round; the median
round counts (one stall of the shared machine moves one round's p99, not the figure)."""
TRITON_GRID = [(8, 5.0), (16, 20.0), (32, 20.0), (64, 50.0), (128, 50.0), (256, 50.0), (256, 100.0)]
"""Triton's dynamic batcher over max batch x max queue delay. 128 and 256 since 2026-12-06: on
this CPU a step's fixed cost dominates (decoder-tiny 0.61 ms at batch 1, 2.77 at 64), and a
request-level batch drains as its members finish, so its long members end at small-batch steps;
Triton at max batch 256 sustained ~240 req/s on decoder-tiny and ~360 on gru-seq where max batch
64 sustained ~170 and ~230 (6-s probes, two seeds). The grid that stopped at 64 understated the
best baseline."""
MAX_BATCHES = (32, 64, 128, 256)
"""Max batch sizes of cellular and of our request-level SloBatcher (the same search)."""
STEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Batch sizes the sequence parts profile a step at and price a request-level batch at (up to
the largest of `MAX_BATCHES` and `TRITON_GRID`)."""
CNN_START = 39.0  # the feed-forward search's first rate
DEVICE = "cpu"  # where the workers and the step profiles run (--device)


@contextlib.contextmanager
def worker(
    model: str, slo_ms: float, batching: BatchingConfig, profile_ms: dict[int, float] | None = None
) -> Iterator[str]:
    config = WorkerConfig(
        model_name="bench",
        model=model,
        slo_ms=slo_ms,
        device=DEVICE,
        batching=batching,
        port=free_port(),
        profile_ms=profile_ms or {},
    )
    with serve_worker(config) as (url, _):
        yield url


def binary_body(sample: np.ndarray, datatype: str) -> tuple[bytes, int]:
    raw = np.ascontiguousarray(sample).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, *sample.shape],
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    return header + raw, len(header)


def gru_lengths(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(np.round(rng.lognormal(np.log(40), 1.1, n)), 2, 768)]


def decoder_lengths(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths (tokens) of `n` decoder-tiny requests: lognormal, median 16
    (sigma 0.6, 1..128) and median 24 (sigma 1.1, 1..384)."""
    prompts = np.clip(np.round(rng.lognormal(np.log(16), 0.6, n)), 1, 128).astype(int)
    outputs = np.clip(np.round(rng.lognormal(np.log(24), 1.1, n)), 1, 384).astype(int)
    return prompts, outputs


def poisson(rate: float, duration_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, list[float]()
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


def bursty(rate: float, duration_s: float, seed: int) -> list[float]:
    """Bursts at 3x the mean rate a fifth of the time, the rest below it: the measurement is
    cut into slots of about 0.5 s, a fifth of them (rounded, at least one when there are two or
    more) chosen at random run at 3x the rate, the others at the rate that keeps the mean at
    `rate`; Poisson arrivals within each slot. The realized mean is the rate but for Poisson
    noise. (It was a free-running two-state MMPP, 3x 20% of the time and 0.5x otherwise, states
    of 0.5 s on average: over a 6-s measurement its high share varied so much that the realized
    mean ran 0.50-1.66x the rate (p5-p95 over 200 seeds), and a rung of the search measured
    another load than its label; seen in the 05:08 UTC run, where 363.2 req/s drew 181.)"""
    rng = random.Random(seed)
    slots = max(1, round(duration_s / 0.5))
    width = duration_s / slots
    high = max(1, round(0.2 * slots)) if slots >= 2 else 0
    hot = set(rng.sample(range(slots), high))
    low_rate = rate * (slots - 3.0 * high) / (slots - high) if slots > high else rate
    out: list[float] = []
    for k in range(slots):
        current = 3.0 * rate if k in hot else low_rate
        t, end = k * width, (k + 1) * width
        while current > 0:
            t += rng.expovariate(current)
            if t >= end:
                break
            out.append(t)
    return out


def p99_ms(latencies_s: list[float]) -> float:
    """Nearest-rank p99 (refusals count as infinitely late)."""
    if not latencies_s:
        return float("nan")
    ordered = sorted(latencies_s)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


@dataclass
class Report:
    sent: int
    ok: int
    latencies_s: list[float]
    outcomes: dict[str, int] = field(default_factory=dict)
    """Why requests missed, from the worker's ``x-accordion-outcome`` header and status:
    ``late`` (the worker answered after the deadline), ``late-client`` (the worker answered in
    time, the client saw it after the SLO: HTTP and event-loop time), ``dropped`` (503: the
    scheduler gave up on it, per reason in ``reasons``), ``rejected`` (503: queue full),
    ``error`` (no answer)."""
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def attainment(self) -> float:
        return self.ok / self.sent if self.sent else 1.0

    def p99_ms(self) -> float:
        return p99_ms(self.latencies_s)

    def score(self) -> tuple[float, float]:
        """(attainment, p99 in ms): what `standing` ranks."""
        return self.attainment, self.p99_ms()


async def load(
    url: str, bodies: list[tuple[bytes, int]], schedule: list[float], slo_ms: float
) -> Report:
    slo_s = slo_ms / 1000.0
    ok, latencies = 0, []
    outcomes: dict[str, int] = {}
    reasons: dict[str, int] = {}
    timeout = aiohttp.ClientTimeout(total=max(10.0, 20 * slo_s))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        loop = asyncio.get_running_loop()
        target = f"{url}/v2/models/bench/infer"

        async def one(k: int) -> None:
            nonlocal ok
            body, length = bodies[k % len(bodies)]
            headers = {
                DEADLINE_HEADER: f"{slo_ms:g}",
                "Content-Type": "application/octet-stream",
                BINARY_HEADER: str(length),
            }
            start = loop.time()
            outcome, text = "error", ""
            try:
                async with session.post(target, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status = resp.status
                    outcome = resp.headers.get(OUTCOME_HEADER, "error")
                    if status != 200:
                        text = raw.decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            elapsed = loop.time() - start
            if status == 200:
                latencies.append(elapsed)
                ok += elapsed <= slo_s
                if outcome == "ok" and elapsed > slo_s:
                    outcome = "late-client"
            else:
                latencies.append(float("inf"))  # a refusal counts as a miss in the tail too
                if outcome == "dropped":
                    with contextlib.suppress(ValueError, AttributeError):
                        text = str(json.loads(text)["error"])
                    key = text
                    reasons[key] = reasons.get(key, 0) + 1
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        begin = loop.time()
        tasks = []
        for k, offset in enumerate(schedule):
            delay = begin + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
    return Report(len(schedule), ok, latencies, outcomes, reasons)


Bodies = list[tuple[bytes, int]]
Arrivals = Callable[[float, float, int], list[float]]
Run = tuple[float, float, float]
T = TypeVar("T")


def measure(
    url: str,
    bodies: Bodies,
    arrivals: Arrivals,
    rate: float,
    duration_s: float,
    slo_ms: float,
    seed: int = 1,
) -> Report:
    return asyncio.run(load(url, bodies, arrivals(rate, duration_s, seed), slo_ms))


def sustainable(runs: list[Run]) -> float:
    """The highest rate measured with >= 99% within the SLO (0 when none)."""
    return max((rate for rate, att, _ in runs if att >= TARGET), default=0.0)


def confirmation(runs: list[Run], confirms: dict[float, list[Run]]) -> tuple[float, float | None]:
    """(the confirmed rate so far, the next rate to confirm, None when there is none): the
    highest rate passed in the search whose `CONFIRM_ROUNDS` measurements there have a median
    round (`median_round`) within the target; a passed rate whose median misses gives way to
    the next highest passed rate. 0 when no passed rate holds."""
    for rate in sorted({r for r, a, _ in runs if a >= TARGET}, reverse=True):
        rounds = confirms.get(rate, [])
        if len(rounds) < CONFIRM_ROUNDS:
            return 0.0, rate
        if median_round(rounds, lambda m: (m[1], m[2]))[1] >= TARGET:
            return rate, None
    return 0.0, None


def search(
    model: str,
    configs: list[tuple[str, BatchingConfig, dict[int, float]]],
    bodies: Bodies,
    slo: float,
    duration: float,
    start: float,
    log: Callable[[str], None],
    is_baseline: Callable[[str], bool],
    arrivals: Arrivals = poisson,
) -> Searched:
    """Every configuration's sustainable rate by one search, the same for all, in one run.

    1. A geometric ladder (x`STEP` from `start`), rate by rate, each configuration measured
       once per rate, interleaved (the machine's background load hits all alike), until each
       has failed twice in a row (or `MAX_RATE`).
    2. `BISECT` rounds of bisection (geometric) per configuration between its highest passed
       rate and the lowest failed rate above it, interleaved round by round.
    3. Each configuration's highest passed rate confirmed: `CONFIRM_ROUNDS` more measurements
       there, interleaved round by round, the median round counting; where it misses, the next
       highest passed rate is confirmed instead (`confirmation`). That is its sustainable rate.
    4. Every configuration measured again at the best baseline's sustainable rate
       (`EQUAL_RATE_S` of load, the same arrivals for all), `EQUAL_ROUNDS` times, interleaved
       round by round: attainment and p99 at equal rate are the median round's (ranked by
       attainment, then p99), every round is kept.
    Every measurement of 1, 2 and 4 follows the noise rule of `robust` (3 has its median).
    Returns the runs per configuration, the confirmations (rounds per rate), that rate, the
    equal-rate (attainment, p99, every round's (attainment, p99)) and the median round's
    outcomes (why requests missed)."""
    with contextlib.ExitStack() as stack:
        urls = {
            label: stack.enter_context(worker(model, slo, b, profile))
            for label, b, profile in configs
        }
        for url in urls.values():
            measure(url, bodies, poisson, start / 2, 2.0, slo)  # warm-up
        table: dict[str, list[Run]] = {label: [] for label in urls}

        def one(label: str, rate: float) -> bool:
            rep = robust(urls[label], bodies, rate, duration, slo, label, log, arrivals=arrivals)
            table[label].append((rate, rep.attainment, rep.p99_ms()))
            return rep.attainment >= TARGET

        failures = dict.fromkeys(urls, 0)
        rate = start
        while rate <= MAX_RATE and any(f < 2 for f in failures.values()):
            for label in urls:
                if failures[label] < 2:
                    failures[label] = 0 if one(label, rate) else failures[label] + 1
            rate = round(rate * STEP, 1)
        for _ in range(BISECT):
            for label in urls:
                passed = sustainable(table[label])
                above = [r for r, a, _ in table[label] if a < TARGET and r > passed]
                if not above or (passed and min(above) / passed < 1.04):
                    continue
                low = passed or min(above) / 2
                one(label, round(math.sqrt(low * min(above)), 1))
        confirms: dict[str, dict[float, list[Run]]] = {label: {} for label in urls}
        log(
            f"  confirming each sustainable rate, {CONFIRM_ROUNDS} rounds of {EQUAL_RATE_S:g} s "
            "(the median round counts):"
        )
        while todo := {
            label: at
            for label in urls
            if (at := confirmation(table[label], confirms[label])[1]) is not None
        }:
            for k in range(CONFIRM_ROUNDS):
                for label, at in todo.items():
                    rep = measure(urls[label], bodies, arrivals, at, EQUAL_RATE_S, slo, 3 + 10 * k)
                    log(
                        f"    {at:6.1f}/s  {label} (confirm {k + 1}): {rep.attainment:.4f}, "
                        f"p99 {rep.p99_ms():.0f} ms {why(rep)}"
                    )
                    confirms[label].setdefault(at, []).append((at, rep.attainment, rep.p99_ms()))
        rates = {k: confirmation(table[k], confirms[k])[0] for k in urls}
        equal_rate = max((r for k, r in rates.items() if is_baseline(k)), default=0.0)
        equal: dict[str, Equal] = {}
        outcomes: dict[str, dict[str, int]] = {}
        if equal_rate > 0:
            log(
                f"  at equal rate, {equal_rate:g} req/s (the best baseline's), {EQUAL_ROUNDS} "
                f"rounds of {EQUAL_RATE_S:g} s:"
            )
            rounds: dict[str, list[Report]] = {label: [] for label in urls}
            for k in range(EQUAL_ROUNDS):
                for label, url in urls.items():
                    rounds[label].append(
                        robust(
                            url,
                            bodies,
                            equal_rate,
                            EQUAL_RATE_S,
                            slo,
                            label,
                            log,
                            2 + 10 * k,
                            arrivals,
                        )
                    )
            for label, reps in rounds.items():
                mid = median_round(reps, Report.score)
                equal[label] = (
                    mid.attainment,
                    mid.p99_ms(),
                    [(r.attainment, r.p99_ms()) for r in reps],
                )
                outcomes[label] = mid.outcomes | {f"reason: {k}": v for k, v in mid.reasons.items()}
    return Searched(table, confirms, rates, equal_rate, equal, outcomes)


@dataclass
class Searched:
    """What `search` found: per configuration, the runs of the ladder and the bisection, the
    confirmation rounds per rate, the sustainable (confirmed) rate, the equal-rate figures and
    the median equal-rate round's outcomes; and that equal rate."""

    runs: dict[str, list[Run]]
    confirms: dict[str, dict[float, list[Run]]]
    rates: dict[str, float]
    equal_rate: float
    equal: dict[str, Equal]
    outcomes: dict[str, dict[str, int]]

    def config(self, label: str) -> dict[str, object]:
        """One configuration's entry in cellular.json."""
        out: dict[str, object] = {
            "rate": self.rates[label],
            "search_rate": sustainable(self.runs[label]),
            "runs": self.runs[label],
            "confirm_rounds": {f"{r:g}": v for r, v in self.confirms[label].items()},
        }
        if label in self.equal:
            att, p99, rounds = self.equal[label]
            out["equal_rate_attainment"], out["equal_rate_p99_ms"] = att, p99
            out["equal_rate_rounds"] = rounds
            out["equal_rate_outcomes"] = self.outcomes.get(label, {})
        return out


Equal = tuple[float, float, list[tuple[float, float]]]
"""At equal rate: the median round's attainment and p99, and every round's."""


def standing(attainment: float, p99_ms: float) -> tuple[float, float]:
    """How measurements compare, greater being better: attainment, then the lower p99."""
    return attainment, -p99_ms


def median_round(rounds: Sequence[T], score: Callable[[T], tuple[float, float]]) -> T:
    """The median of measurements ranked best first (`standing` of their (attainment, p99)
    `score`): with three, one stalled round (the worst) and one lucky round (the best) both
    drop out."""
    ranked = sorted(rounds, key=lambda r: standing(*score(r)), reverse=True)
    return ranked[(len(ranked) - 1) // 2]


def robust(
    url: str,
    bodies: Bodies,
    rate: float,
    duration: float,
    slo: float,
    label: str,
    log: Callable[[str], None],
    seed: int = 1,
    arrivals: Arrivals = poisson,
) -> Report:
    """One measurement under the noise rule, the same for every configuration: a measurement
    below the target is repeated once at once (other arrivals, same rate and length); the
    configuration fails there only if the repeat fails too, and the better of the two counts.
    A stall of the shared machine (seconds, from other jobs) hits one measurement, rarely two
    in a row; a configuration that cannot sustain the rate fails both."""
    rep = measure(url, bodies, arrivals, rate, duration, slo, seed=seed)
    log(f"    {rate:6.1f}/s  {label}: {rep.attainment:.4f}, p99 {rep.p99_ms():.0f} ms {why(rep)}")
    if rep.attainment >= TARGET:
        return rep
    again = measure(url, bodies, arrivals, rate, duration, slo, seed=seed + 100)
    log(
        f"    {rate:6.1f}/s  {label} (repeat): {again.attainment:.4f}, "
        f"p99 {again.p99_ms():.0f} ms {why(again)}"
    )
    return max(rep, again, key=lambda r: standing(*r.score()))


def why(rep: Report) -> str:
    """The misses of a measurement by outcome (and drop reason), for the log."""
    missed = {k: v for k, v in rep.outcomes.items() if k != "ok" and v}
    if not missed:
        return ""
    return f"[misses: {missed}{f', dropped because {rep.reasons}' if rep.reasons else ''}]"


def sequences(
    model: str,
    bodies: Bodies,
    slo: float,
    duration: float,
    log: Callable[[str], None],
    start: float,
    step_profile_s: dict[int, float],
    lengths: list[int],
    keep: Callable[[str], bool] = lambda _label: True,
) -> dict[str, object]:
    """Cellular against the request-level baselines on one sequence model, every one at the
    settings the same search finds best: max batch `MAX_BATCHES` for cellular and our SloBatcher
    (the latter also with a profile at the workload's lengths: a batch of b takes the longest
    of b requests), Triton's dynamic batcher over max batch x max queue delay. Sustainable
    rates (`search`), then every configuration measured again at the best baseline's
    sustainable rate, at once (p99 at equal rate, `EQUAL_RATE_S` of load each)."""
    longest = batch_longest(lengths)
    workload_profile = {b: s * longest[b] * 1000 for b, s in step_profile_s.items()}
    configs: list[tuple[str, BatchingConfig, dict[int, float]]] = []
    for mb in MAX_BATCHES:
        configs.append(
            (
                f"cellular (ours, max batch {mb})",
                BatchingConfig(mode="cellular", max_batch_size=mb),
                {},
            )
        )
    for mb in MAX_BATCHES:
        configs.append(
            (f"request-level SloBatcher (max batch {mb})", BatchingConfig(max_batch_size=mb), {})
        )
    configs.append(
        (
            "request-level SloBatcher (max batch 32, profile at the lengths)",
            BatchingConfig(max_batch_size=32),
            workload_profile,
        )
    )
    for mb, delay in TRITON_GRID:
        configs.append(
            (
                f"request-level Triton (max batch {mb}, delay {delay:g} ms)",
                BatchingConfig(policy="triton", max_batch_size=mb, max_queue_delay_ms=delay),
                {},
            )
        )
    configs = [c for c in configs if keep(c[0])]
    found = search(
        model, configs, bodies, slo, duration, start, log, lambda k: not k.startswith("cellular")
    )
    seq = {label: found.config(label) for label, _, _ in configs}
    rates = found.rates
    best = max((k for k in rates if not k.startswith("cellular")), key=rates.__getitem__)
    ours = max((k for k in rates if k.startswith("cellular")), key=rates.__getitem__)
    return {
        "best_baseline": best,
        "ours": ours,
        "equal_rate": found.equal_rate,
        "configs": seq,
        "step_profile_ms": {b: 1000 * s for b, s in step_profile_s.items()},
        "batch_longest": longest,
        "noise_rule": "repeat once",
        "confirm_rounds": CONFIRM_ROUNDS,
        "confirm_s": EQUAL_RATE_S,
        "start_rate": start,
        "equal_rate_s": EQUAL_RATE_S,
        "equal_rate_rounds": EQUAL_ROUNDS,
    }


def batch_longest(lengths: list[int], draws: int = 2000, seed: int = 3) -> dict[int, float]:
    """Per batch size b, the mean length of the longest of b requests drawn from `lengths`:
    how many steps a request-level batch of b runs."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(lengths)
    return {b: float(np.mean(rng.choice(arr, (draws, b)).max(axis=1))) for b in STEP_SIZES}


def step_profile(model_name: str) -> dict[int, float]:
    """The cell's median step latency per batch size, measured here (one torch thread, on
    `DEVICE`)."""
    import torch

    from accordion.workers.seqmodels import STAGED_BUILTINS
    from accordion.workers.stagedworker import profile_stages, stage_profile_s

    torch.set_num_threads(1)
    model = STAGED_BUILTINS[model_name]()
    model.to(DEVICE)
    return stage_profile_s(profile_stages(model, list(STEP_SIZES), repeats=3))[0]


def log_file(out_dir: Path, part: str, now: time.struct_time) -> Path:
    """Where a run's log goes: cellular.log, or cellular-PART.log for a part (seq-dec for
    ``seq,dec``), with the run's UTC start (-MMDD-HHMM) added when that file exists already, so
    that a run never overwrites the log a report quotes."""
    stem = "cellular" if part == "all" else f"cellular-{part.replace(',', '-')}"
    path = out_dir / f"{stem}.log"
    if path.exists():
        path = out_dir / f"{stem}-{time.strftime('%m%d-%H%M', now)}.log"
    return path


def main() -> None:
    global DEVICE, STEP, MAX_RATE, EQUAL_RATE_S, EQUAL_ROUNDS, BISECT
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--part", default="all", help="comma-separated: seq, dec, cnn (all: every one)"
    )
    parser.add_argument(
        "--configs",
        default="",
        help="sequence parts: run only the configurations whose label contains one of these "
        "strings, separated by ';' (labels contain commas) or, without a ';', by ',' "
        "(default: every one)",
    )
    parser.add_argument(
        "--start", type=float, default=0.0, help="sequence parts: the ladder's first rate"
    )
    parser.add_argument("--device", default="cpu", help="the workers' device: cpu or cuda")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write cellular.json and the log here, the log line by line (default: "
        "bench/results, merged into its cellular.json)",
    )
    parser.add_argument("--duration-s", type=float, default=0.0, help="seconds per measurement")
    parser.add_argument("--ladder-step", type=float, default=STEP, help="the ladder's factor")
    parser.add_argument("--max-rate", type=float, default=MAX_RATE, help="the ladder's top")
    parser.add_argument(
        "--equal-rate-s", type=float, default=EQUAL_RATE_S, help="seconds at equal rate"
    )
    parser.add_argument(
        "--equal-rounds",
        type=int,
        default=EQUAL_ROUNDS,
        help="rounds at equal rate (the median counts)",
    )
    parser.add_argument("--bisect", type=int, default=BISECT, help="bisection rounds")
    args = parser.parse_args()
    DEVICE, STEP, MAX_RATE, EQUAL_RATE_S, EQUAL_ROUNDS, BISECT = (
        args.device,
        args.ladder_step,
        args.max_rate,
        args.equal_rate_s,
        args.equal_rounds,
        args.bisect,
    )
    out_dir: Path = args.out or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_file(out_dir, args.part, time.gmtime())
    stream = log_path.open("w") if args.out else None
    print(f"log: {log_path}", flush=True)
    wanted = filter_terms(args.configs)

    def keep(label: str) -> bool:
        return not wanted or any(w in label for w in wanted)

    parts = {"seq", "dec", "cnn"} if args.part == "all" else set(args.part.split(","))
    duration = args.duration_s or (4.0 if args.quick else 6.0)
    lines: list[str] = []
    results: dict[str, object] = {}

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)
        if stream is not None:
            stream.write(text + "\n")
            stream.flush()

    import torch

    if DEVICE != "cpu":
        log(f"device {DEVICE}: {torch.cuda.get_device_name(torch.device(DEVICE))}")

    # ------------------------------------------------------------------ sequences
    if "seq" in parts:
        from accordion.workers.seqmodels import GruStaged

        gru = GruStaged()
        lengths = gru_lengths(600, seed=7)
        bodies = [binary_body(gru.example(n, seed=i), "FP32") for i, n in enumerate(lengths)]
        log(
            f"gru-seq, lengths lognormal median 40, sigma 1.1, in 2..768 (mean "
            f"{np.mean(lengths):.1f}, p99 {np.percentile(lengths, 99):.0f}), SLO 1000 ms"
        )
        results["sequences"] = sequences(
            "builtin:gru-seq",
            bodies,
            1000.0,
            duration,
            log,
            args.start or 39.0,
            step_profile("gru-seq"),
            lengths,
            keep,
        ) | {
            "mean_length": float(np.mean(lengths)),
            "p99_length": float(np.percentile(lengths, 99)),
            "configs_filter": args.configs,
        }
    if "dec" in parts:
        rng = np.random.default_rng(9)
        prompts, outputs = decoder_lengths(rng, 400)
        bodies = [
            binary_body(np.concatenate([rng.integers(1, 256, p), np.zeros(o, np.int64)]), "INT64")
            for p, o in zip(prompts, outputs, strict=True)
        ]
        steps = [int(x) for x in prompts + outputs - 1]
        log(
            f"decoder-tiny, prompts lognormal median 16, outputs lognormal median 24, sigma 1.1, "
            f"<= 384 (steps: mean {np.mean(steps):.1f}, p99 {np.percentile(steps, 99):.0f}), "
            "SLO 2000 ms"
        )
        results["decoder"] = sequences(
            "builtin:decoder-tiny",
            bodies,
            2000.0,
            duration,
            log,
            args.start or 10.0,
            step_profile("decoder-tiny"),
            steps,
            keep,
        ) | {
            "mean_length": float(np.mean(steps)),
            "p99_length": float(np.percentile(steps, 99)),
            "configs_filter": args.configs,
        }

    # ------------------------------------------------------------------------ CNN
    if "cnn" in parts:
        from accordion.workers.seqmodels import cnn_staged

        cnn = cnn_staged()
        bodies = [binary_body(cnn.example(0, seed=i), "FP32") for i in range(50)]
        slo = 100.0
        cnn_configs: list[tuple[str, BatchingConfig, dict[int, float]]] = [
            ("node-level (ours)", BatchingConfig(mode="node", max_batch_size=16), {}),
            ("request-level SloBatcher", BatchingConfig(max_batch_size=16), {}),
        ]
        out: dict[str, object] = {}
        for name, arrivals in (("Poisson", poisson), ("bursty", bursty)):
            log(f"cnn-deep, {name} arrivals, SLO {slo:g} ms")
            # the sequence parts' search (ladder from CNN_START, bisection, noise rule), on
            # these arrivals; node-level's attainment at the request-level batcher's
            # sustainable rate is the separate equal-rate measurement
            found = search(
                "builtin:cnn-deep",
                cnn_configs,
                bodies,
                slo,
                duration,
                CNN_START,
                log,
                lambda k: k.startswith("request-level"),
                arrivals,
            )
            per = {label: found.config(label) for label in found.runs}
            if "node-level (ours)" in found.equal:
                per["node-level (ours)"]["attainment_at_baseline_rate"] = found.equal[
                    "node-level (ours)"
                ][0]
            out[name] = per
            out[f"{name} equal rate"] = found.equal_rate
        out["search"] = (
            f"ladder x1.25 from {CNN_START:g} req/s, bisection, noise rule, each rate confirmed "
            f"by the median of {CONFIRM_ROUNDS} rounds"
        )
        results["cnn"] = out
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    # cellular.json holds every part, each from its latest run (with its time and load)
    path = out_dir / "cellular.json"
    merged = json.loads(path.read_text()) if path.exists() and args.part != "all" else {}
    search_settings = {
        "device": DEVICE,
        "duration_s": duration,
        "ladder_step": STEP,
        "max_rate": MAX_RATE,
        "equal_rate_s": EQUAL_RATE_S,
        "equal_rate_rounds": EQUAL_ROUNDS,
        "bisect": BISECT,
    }
    for key, part in results.items():
        assert isinstance(part, dict)
        merged[key] = part | {"when": stamp, "load_after": load} | search_settings
    path.write_text(json.dumps(merged, indent=1, default=str))
    if stream is None:
        log_path.write_text("\n".join(lines) + "\n")
    else:
        stream.close()


if __name__ == "__main__":
    main()
