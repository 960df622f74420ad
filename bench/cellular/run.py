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

Per configuration: the sustainable rate (the highest mean rate with >= 99% of requests answered
within the SLO at the client: a geometric bracket, then bisection), and p99 latency at a common
rate (the best baseline's sustainable rate). Results: bench/results/cellular.md.

Usage: flock /tmp/accordion-heavy.lock .venv/bin/python bench/cellular/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.workers.config import BINARY_HEADER, DEADLINE_HEADER, BatchingConfig, WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
TARGET = 0.99


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def worker(model: str, slo_ms: float, batching: BatchingConfig) -> Iterator[str]:
    port = free_port()
    config = WorkerConfig(
        model_name="bench", model=model, slo_ms=slo_ms, batching=batching, port=port
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(config.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "accordion.workers", "serve", "--config", f.name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"worker exited: {err}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as resp,
            ):
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("worker did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(f.name)


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


def sustainable(
    url: str,
    bodies: Bodies,
    arrivals: Arrivals,
    start: float,
    duration_s: float,
    slo_ms: float,
    log: Callable[[str], None],
) -> tuple[float, list[Run]]:
    """Highest rate with >= 99% within the SLO: a geometric bracket, then 3 bisections."""
    runs = []
    good, bad = 0.0, None
    rate = start
    for _ in range(8):
        rep = measure(url, bodies, arrivals, rate, duration_s, slo_ms)
        runs.append((rate, rep.attainment, rep.p99_ms()))
        log(f"    {rate:7.1f}/s  attainment {rep.attainment:.4f}  p99 {rep.p99_ms():.0f} ms")
        if rep.attainment >= TARGET:
            good = rate
            rate *= 1.5
        else:
            bad = rate
            break
    if bad is None:
        return good, runs
    if good == 0.0:
        lo, hi = 0.0, bad
    else:
        lo, hi = good, bad
    for _ in range(3):
        mid = (lo + hi) / 2 if lo > 0 else hi / 2
        rep = measure(url, bodies, arrivals, mid, duration_s, slo_ms)
        runs.append((mid, rep.attainment, rep.p99_ms()))
        log(f"    {mid:7.1f}/s  attainment {rep.attainment:.4f}  p99 {rep.p99_ms():.0f} ms")
        if rep.attainment >= TARGET:
            lo = mid
        else:
            hi = mid
    return lo, runs


def sequences(
    model: str,
    bodies: Bodies,
    slo: float,
    grid: list[tuple[int, float]],
    duration: float,
    log: Callable[[str], None],
    start: float,
) -> dict[str, object]:
    """Cellular against the request-level baselines (SloBatcher; Triton at each `grid`
    setting) on one sequence model: sustainable rates, then p99 at the best baseline's."""
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
    seq: dict[str, dict[str, object]] = {}
    for label, batching in configs:
        log(f"  {label}")
        with worker(model, slo, batching) as url:
            measure(url, bodies, poisson, start / 2, 2.0, slo)  # warm-up
            rate, runs = sustainable(url, bodies, poisson, start, duration, slo, log)
        seq[label] = {"rate": rate, "runs": runs, "batching": batching.model_dump()}
    baselines = {k: float(v["rate"]) for k, v in seq.items() if not k.startswith("cellular")}  # type: ignore[arg-type]
    best = max(baselines, key=baselines.__getitem__)
    equal_rate = baselines[best]
    log(f"  p99 at the best baseline's sustainable rate ({equal_rate:.1f}/s)")
    for label in dict.fromkeys(("cellular (ours)", "request-level SloBatcher", best)):
        batching = next(b for lab, b in configs if lab == label)
        with worker(model, slo, batching) as url:
            measure(url, bodies, poisson, start / 2, 2.0, slo)
            reps = [
                measure(url, bodies, poisson, equal_rate, duration, slo, seed=s) for s in (11, 12)
            ]
        p99 = p99_ms([x for r in reps for x in r.latencies_s])
        att = sum(r.ok for r in reps) / sum(r.sent for r in reps)
        seq[label]["equal_rate_p99_ms"] = p99
        seq[label]["equal_rate_attainment"] = att
        log(f"    {label}: p99 {p99:.0f} ms, attainment {att:.4f}")
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
            "builtin:gru-seq", bodies, 500.0, grid, duration, log, 40.0
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
            "builtin:decoder-tiny", bodies, 2000.0, [(32, 50.0)], duration, log, 10.0
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
            per: dict[str, dict[str, object]] = {}
            log(f"cnn-deep, {name} arrivals, SLO {slo:g} ms")
            for label, batching in cnn_configs:
                log(f"  {label}")
                with worker("builtin:cnn-deep", slo, batching) as url:
                    measure(url, bodies, poisson, 20, 2.0, slo)
                    rate, runs = sustainable(url, bodies, arrivals, 40.0, duration, slo, log)
                per[label] = {"rate": rate, "runs": runs}
            base_rate = float(per["request-level SloBatcher"]["rate"])  # type: ignore[arg-type]
            with worker("builtin:cnn-deep", slo, cnn_configs[0][1]) as url:
                measure(url, bodies, poisson, 20, 2.0, slo)
                reps = [
                    measure(url, bodies, arrivals, base_rate, duration, slo, seed=s)
                    for s in (11, 12)
                ]
            att = sum(r.ok for r in reps) / sum(r.sent for r in reps)
            per["node-level (ours)"]["attainment_at_baseline_rate"] = att
            log(f"  node-level at the request-level rate {base_rate:.1f}/s: attainment {att:.4f}")
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
