"""Cellular and node-level batching against request-level batching: one worker, one load.

The same worker server (a process per configuration, `python -m accordion.workers serve`, real
HTTP, KServe v2 binary tensors, one torch thread), the same open-loop load from this process:

* variable-length sequences: builtin:gru-seq (GRU, hidden 512), request lengths drawn from a
  lognormal (median 48 steps, capped at 384), SLO 500 ms. Configurations: ``mode: cellular``
  (ours, per-step batching) against the request-level baselines on the same model (a batch of
  whole requests runs until its longest member finishes; nobody joins meanwhile): our
  SloBatcher, and Triton's dynamic batcher swept over max batch x max queue delay (best kept);
* a feed-forward model: builtin:cnn-deep (10 conv stages), SLO 100 ms, Poisson and bursty
  (two-state Markov-modulated Poisson: 3x the mean rate 20% of the time) arrivals:
  ``mode: node`` (LazyBatching) against the request-level SloBatcher (the product's default).

All configurations of a workload run at once (one idle worker process each) and are measured
on a ladder of rates, interleaved rate by rate so the machine's background load hits all alike;
a configuration leaves the ladder after two failures in a row. Per configuration: the
sustainable rate (the highest rate measured with >= 99% of requests answered within the SLO at
the client), and p99 latency at the best baseline's sustainable rate (same measurement).
Results: bench/results/cellular.md (bench/cellular/report.py renders it from cellular.json).

Usage: flock /tmp/accordion-heavy.lock .venv/bin/python bench/cellular/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.workers.config import BINARY_HEADER, DEADLINE_HEADER, BatchingConfig, WorkerConfig
from bench.batching.run import free_port, serve_worker

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TARGET = 0.99
SEQ_RATES = [20.0, 30.0, 40.0, 55.0, 70.0, 90.0, 115.0, 145.0, 180.0, 220.0]
DEC_RATES = [5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 55.0, 70.0]
CNN_RATES = [20.0, 40.0, 60.0, 80.0, 100.0, 130.0, 160.0, 200.0]


@contextlib.contextmanager
def worker(model: str, slo_ms: float, batching: BatchingConfig) -> Iterator[str]:
    config = WorkerConfig(
        model_name="bench", model=model, slo_ms=slo_ms, batching=batching, port=free_port()
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
    return [int(x) for x in np.clip(np.round(rng.lognormal(np.log(48), 0.8, n)), 2, 384)]


def poisson(rate: float, duration_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, list[float]()
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            return out
        out.append(t)


def bursty(rate: float, duration_s: float, seed: int) -> list[float]:
    """Two-state MMPP: 3x the mean rate 20% of the time, 0.5x otherwise (mean: the rate);
    states last 0.5 s on average."""
    rng = random.Random(seed)
    t, out, high = 0.0, [], False
    switch = rng.expovariate(2.0)
    while t < duration_s:
        current = rate * (3.0 if high else 0.5)
        step = rng.expovariate(current)
        if t + step >= switch:
            t = switch
            high = rng.random() < 0.2
            switch = t + rng.expovariate(2.0)
            continue
        t += step
        if t < duration_s:
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

    @property
    def attainment(self) -> float:
        return self.ok / self.sent if self.sent else 1.0

    def p99_ms(self) -> float:
        return p99_ms(self.latencies_s)


async def load(
    url: str, bodies: list[tuple[bytes, int]], schedule: list[float], slo_ms: float
) -> Report:
    slo_s = slo_ms / 1000.0
    ok, latencies = 0, []
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
            try:
                async with session.post(target, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            elapsed = loop.time() - start
            if status == 200:
                latencies.append(elapsed)
                ok += elapsed <= slo_s
            else:
                latencies.append(float("inf"))  # a refusal counts as a miss in the tail too

        begin = loop.time()
        tasks = []
        for k, offset in enumerate(schedule):
            delay = begin + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
    return Report(len(schedule), ok, latencies)


Bodies = list[tuple[bytes, int]]
Arrivals = Callable[[float, float, int], list[float]]
Run = tuple[float, float, float]


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


def ladder(
    model: str,
    configs: list[tuple[str, BatchingConfig]],
    bodies: Bodies,
    arrivals: Arrivals,
    rates: list[float],
    slo: float,
    duration: float,
    log: Callable[[str], None],
) -> dict[str, list[Run]]:
    """Every configuration's worker started at once; then rate after rate, each measured
    once per configuration, interleaved (the machine's background load hits all alike); a
    configuration stops after two failures (< 99% within the SLO) in a row."""
    with contextlib.ExitStack() as stack:
        urls = {label: stack.enter_context(worker(model, slo, b)) for label, b in configs}
        for url in urls.values():
            measure(url, bodies, poisson, rates[0] / 2, 2.0, slo)  # warm-up
        failures = dict.fromkeys(urls, 0)
        table: dict[str, list[Run]] = {label: [] for label in urls}
        for rate in rates:
            for label, url in urls.items():
                if failures[label] >= 2:
                    continue
                rep = measure(url, bodies, arrivals, rate, duration, slo)
                table[label].append((rate, rep.attainment, rep.p99_ms()))
                failures[label] = 0 if rep.attainment >= TARGET else failures[label] + 1
                log(f"    {rate:6.1f}/s  {label}: {rep.attainment:.4f}, p99 {rep.p99_ms():.0f} ms")
    return table


def sustainable(runs: list[Run]) -> float:
    """The highest rate measured with >= 99% within the SLO (0 when none)."""
    return max((rate for rate, att, _ in runs if att >= TARGET), default=0.0)


def sequences(
    model: str,
    bodies: Bodies,
    slo: float,
    grid: list[tuple[int, float]],
    duration: float,
    log: Callable[[str], None],
    rates: list[float],
) -> dict[str, object]:
    """Cellular against the request-level baselines (SloBatcher; Triton at each `grid`
    setting) on one sequence model: sustainable rates, and p99 at the best baseline's."""
    configs: list[tuple[str, BatchingConfig]] = [
        ("cellular (ours)", BatchingConfig(mode="cellular", max_batch_size=32)),
        ("request-level SloBatcher", BatchingConfig(max_batch_size=32)),
    ]
    for mb, delay in grid:
        configs.append(
            (
                f"request-level Triton (max batch {mb}, delay {delay:g} ms)",
                BatchingConfig(policy="triton", max_batch_size=mb, max_queue_delay_ms=delay),
            )
        )
    table = ladder(model, configs, bodies, poisson, rates, slo, duration, log)
    seq: dict[str, dict[str, object]] = {
        label: {"rate": sustainable(table[label]), "runs": table[label]} for label, _ in configs
    }
    baselines = {k: sustainable(table[k]) for k in table if not k.startswith("cellular")}
    best = max(baselines, key=baselines.__getitem__)
    equal_rate = baselines[best]
    for label, runs in table.items():
        there = [(att, p99) for rate, att, p99 in runs if rate == equal_rate]
        if there:
            seq[label]["equal_rate_attainment"], seq[label]["equal_rate_p99_ms"] = there[0]
    return {"best_baseline": best, "equal_rate": equal_rate, "configs": seq}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--part", choices=["all", "seq", "dec", "cnn"], default="all")
    args = parser.parse_args()
    duration = 4.0 if args.quick else 6.0
    lines: list[str] = []
    results: dict[str, object] = {}

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    # ------------------------------------------------------------------ sequences
    if args.part in ("all", "seq"):
        from accordion.workers.seqmodels import GruStaged

        gru = GruStaged()
        lengths = gru_lengths(400, seed=7)
        bodies = [binary_body(gru.example(n, seed=i), "FP32") for i, n in enumerate(lengths)]
        grid = (
            [(8, 5.0), (16, 20.0), (32, 50.0)]
            if args.quick
            else [(8, 5.0), (16, 20.0), (32, 20.0), (64, 50.0)]
        )
        log(
            f"gru-seq, lengths lognormal median 48 (mean {np.mean(lengths):.1f}, p99 "
            f"{np.percentile(lengths, 99):.0f}), SLO 500 ms"
        )
        results["sequences"] = sequences(
            "builtin:gru-seq", bodies, 500.0, grid, duration, log, SEQ_RATES
        ) | {"mean_length": float(np.mean(lengths))}
    if args.part == "dec":  # a second sequence workload, run on its own (--part dec)
        rng = np.random.default_rng(9)
        prompts = np.clip(np.round(rng.lognormal(np.log(16), 0.6, 300)), 1, 128).astype(int)
        outputs = np.clip(np.round(rng.lognormal(np.log(32), 0.8, 300)), 1, 256).astype(int)
        bodies = [
            binary_body(np.concatenate([rng.integers(1, 256, p), np.zeros(o, np.int64)]), "INT64")
            for p, o in zip(prompts, outputs, strict=True)
        ]
        steps = prompts + outputs - 1
        log(
            f"decoder-tiny, prompts lognormal median 16, outputs median 32 (steps: mean "
            f"{np.mean(steps):.1f}, p99 {np.percentile(steps, 99):.0f}), SLO 2000 ms"
        )
        results["decoder"] = sequences(
            "builtin:decoder-tiny", bodies, 2000.0, [(32, 50.0)], duration, log, DEC_RATES
        ) | {"mean_length": float(np.mean(steps))}

    # ------------------------------------------------------------------------ CNN
    if args.part in ("all", "cnn"):
        from accordion.workers.seqmodels import cnn_staged

        cnn = cnn_staged()
        bodies = [binary_body(cnn.example(0, seed=i), "FP32") for i in range(50)]
        slo = 100.0
        cnn_configs = [
            ("node-level (ours)", BatchingConfig(mode="node", max_batch_size=16)),
            ("request-level SloBatcher", BatchingConfig(max_batch_size=16)),
        ]
        out: dict[str, object] = {}
        for name, arrivals in (("Poisson", poisson), ("bursty", bursty)):
            log(f"cnn-deep, {name} arrivals, SLO {slo:g} ms")
            table = ladder(
                "builtin:cnn-deep", cnn_configs, bodies, arrivals, CNN_RATES, slo, duration, log
            )
            base_rate = sustainable(table["request-level SloBatcher"])
            per: dict[str, dict[str, object]] = {
                label: {"rate": sustainable(runs), "runs": runs} for label, runs in table.items()
            }
            there = [att for rate, att, _ in table["node-level (ours)"] if rate == base_rate]
            if there:
                per["node-level (ours)"]["attainment_at_baseline_rate"] = there[0]
            out[name] = per
        results["cnn"] = out
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["when"] = stamp
    name = "cellular.json" if args.part == "all" else f"cellular-{args.part}.json"
    (RESULTS / name).write_text(json.dumps(results, indent=1, default=str))
    (RESULTS / name.replace(".json", ".log")).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
