"""Batching benchmark: our SLO batcher against no batching, Triton's and Clipper's, in one run.

One real torch model on this machine's CPU (one torch thread), the same worker server (a
separate process, `python -m accordion.workers serve`), the same open-loop Poisson load from
this process. For each policy:

* SLO attainment at a grid of arrival rates (fractions of the physical limit), refined by
  bisection around the last rate with >= 99% of requests answered within the SLO: the highest
  sustainable rate;
* goodput at 2x that rate (overload: does it collapse?) and p99 latency at the sustainable rate.

The physical limit is the model's peak batched throughput, max_b b / p50(b), measured here with
the same runner the worker uses. Results: bench/results/batching.md and batching.png.

Usage: .venv/bin/python bench/batching/run.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accordion.workers.config import BatchingConfig, WorkerConfig
from accordion.workers.loadgen import LoadReport, poisson_schedule, run_load
from accordion.workers.profiler import profile_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MODEL = "builtin:demo-xl"
SLO_MS = 200.0
TARGET_ATTAINMENT = 0.99


@dataclass
class PolicyResult:
    name: str
    label: str
    curve: list[tuple[float, float]] = field(default_factory=list)  # (rate, attainment)
    sustainable_qps: float = 0.0
    p99_ms: float = float("nan")
    overload_goodput_qps: float = 0.0
    overload_attainment: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def worker_process(batching: BatchingConfig, profile_ms: dict[int, float]) -> Any:
    port = free_port()
    config = WorkerConfig(
        model_name="bench",
        model=MODEL,
        slo_ms=SLO_MS,
        profile_ms=profile_ms,
        batching=batching,
        port=port,
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
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
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


def measure(url: str, rate: float, duration_s: float, seed: int) -> LoadReport:
    schedule = poisson_schedule(rate, duration_s, seed)
    return asyncio.run(run_load(url, "bench", schedule, slo_ms=SLO_MS, max_duration_s=duration_s))


def evaluate(
    results: list[PolicyResult],
    urls: dict[str, str],
    grid: list[float],
    duration_s: float,
    refine_steps: int,
) -> None:
    """Interleaved: at every rate, every policy still in the race, so that the load of other
    processes on this shared machine hits all policies alike. A failing point is measured once
    more before a policy leaves the grid (the same rule for every policy)."""
    seeds = iter(range(1_000_000))

    def point(r: PolicyResult, rate: float, tag: str = "") -> LoadReport:
        report = measure(urls[r.name], rate, duration_s, seed=next(seeds))
        r.curve.append((rate, report.attainment))
        print(f"  {r.name:8s} {rate:7.1f}/s{tag} {report.summary()}", flush=True)
        return report

    for r in results:
        measure(urls[r.name], grid[1], 2.0, seed=99)  # warm the server and the policy's state
    lo = {r.name: 0.0 for r in results}
    hi: dict[str, float | None] = {r.name: None for r in results}
    for rate in grid:
        racing = [r for r in results if hi[r.name] is None]
        if not racing:
            break
        for r in racing:
            report = point(r, rate)
            if report.attainment < TARGET_ATTAINMENT:
                report = point(r, rate, " (retry)")
            if report.attainment >= TARGET_ATTAINMENT:
                lo[r.name], r.p99_ms = rate, report.percentile_ms(99)
            else:
                hi[r.name] = rate
    for _ in range(refine_steps):
        for r in results:
            upper = hi[r.name]
            if upper is None:
                continue
            mid = (lo[r.name] + upper) / 2
            report = point(r, mid)
            if report.attainment >= TARGET_ATTAINMENT:
                lo[r.name], r.p99_ms = mid, report.percentile_ms(99)
            else:
                hi[r.name] = mid
    for r in results:
        r.sustainable_qps = lo[r.name]
        report = point(r, 2 * lo[r.name] if lo[r.name] > 0 else grid[1], " (2x)")
        r.overload_goodput_qps = report.goodput_qps
        r.overload_attainment = report.attainment
        r.curve.sort()


def plot(results: list[PolicyResult], physical_qps: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in results:
        xs, ys = zip(*r.curve, strict=True) if r.curve else ((), ())
        ax.plot(xs, [100 * y for y in ys], marker="o", label=r.label)
    ax.axhline(100 * TARGET_ATTAINMENT, color="grey", linestyle=":", linewidth=1)
    ax.axvline(physical_qps, color="black", linestyle="--", linewidth=1, label="physical limit")
    ax.set_xlabel("arrival rate (requests/s, Poisson)")
    ax.set_ylabel(f"requests within {SLO_MS:.0f} ms SLO (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"{MODEL} on CPU (1 thread), KServe v2 worker, SLO {SLO_MS:.0f} ms")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    # SIGTERM ends the run through `finally` blocks, so no worker process outlives it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    args = parser.parse_args()
    duration_s = 3.0 if args.quick else 6.0
    refine = 1 if args.quick else 3
    started = time.monotonic()

    sizes = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96]
    load_before = os.getloadavg()[0]
    profiles = profile_model(MODEL, sizes, repeats=15 if args.quick else 40)
    physical_qps = max(p.throughput_qps for p in profiles)
    best_b = max(profiles, key=lambda p: p.throughput_qps).batch_size
    # The batch cap every policy gets: the planner's rule, the largest profiled batch whose
    # worst case (waiting for the previous batch, then running) fits the SLO.
    fitting = [p.batch_size for p in profiles if 2 * p.p90_ms <= SLO_MS]
    max_batch = max(fitting) if fitting else 1
    profile_ms = {p.batch_size: p.p90_ms for p in profiles if p.batch_size <= max_batch}
    print(f"physical limit: {physical_qps:.0f}/s at batch {best_b}", flush=True)
    for p in profiles:
        print(f"  b={p.batch_size:3d} p50={p.p50_ms:7.2f} ms  {p.throughput_qps:7.0f}/s")

    grid = [physical_qps * f for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)]
    policies = [
        ("none", "no batching", BatchingConfig(policy="none")),
        (
            "triton",
            f"Triton dynamic batcher (max {max_batch}, delay 5 ms)",
            BatchingConfig(policy="triton", max_batch_size=max_batch, max_queue_delay_ms=5.0),
        ),
        (
            "clipper",
            f"Clipper AIMD (max {max_batch})",
            BatchingConfig(policy="clipper", max_batch_size=max_batch),
        ),
        (
            "slo",
            f"Accordion SLO batcher (max {max_batch})",
            BatchingConfig(policy="slo", max_batch_size=max_batch, margin_ms=3.0),
        ),
    ]
    results = [PolicyResult(name, label) for name, label, _ in policies]
    with contextlib.ExitStack() as stack:
        urls = {
            name: stack.enter_context(worker_process(batching, profile_ms))
            for name, _, batching in policies
        }
        evaluate(results, urls, grid, duration_s, refine)
    # The physical limit again after the runs: the best the hardware did in either.
    again = profile_model(MODEL, sizes, repeats=15 if args.quick else 40)
    physical_qps = max(physical_qps, *(p.throughput_qps for p in again))
    best_b = max([*profiles, *again], key=lambda p: p.throughput_qps).batch_size
    load_after = os.getloadavg()[0]
    print(
        f"physical limit after the runs: {physical_qps:.0f}/s; load {load_before} -> {load_after}"
    )
    write_results(
        results,
        max_batch,
        physical_qps,
        best_b,
        profiles,
        time.monotonic() - started,
        args.quick,
        (load_before, load_after),
    )


def write_results(
    results: list[PolicyResult],
    max_batch: int,
    physical_qps: float,
    best_b: int,
    profiles: list[Any],
    elapsed_s: float,
    quick: bool,
    load: tuple[float, float],
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    ours = next(r for r in results if r.name == "slo")
    baselines = [r for r in results if r.name != "slo"]
    best = max(baselines, key=lambda r: r.sustainable_qps)
    ratio = ours.sustainable_qps / best.sustainable_qps if best.sustainable_qps else float("inf")
    of_limit = ours.sustainable_qps / physical_qps
    overload_keep = ours.overload_goodput_qps / ours.sustainable_qps if ours.sustainable_qps else 0
    lines = [
        "# Batching benchmark",
        "",
        f"`bench/batching/run.py`{' --quick' if quick else ''}: model `{MODEL}` (an MLP of the "
        "built-in demo family) on this machine's CPU with one torch thread, served by the "
        "KServe v2 worker (a separate process), open-loop Poisson load from one client process "
        f"on loopback, SLO {SLO_MS:.0f} ms end to end at the client, batch cap {max_batch} for "
        "every batching policy (the planner's rule: the largest profiled batch b with "
        "2 x p90(b) <= SLO). Sustainable rate: the highest arrival rate with >= 99% of "
        "requests answered within the SLO (grid of fractions of the physical limit, then "
        "bisection). Overload: the same policy at 2x its sustainable rate. "
        f"Run time {elapsed_s / 60:.1f} min. The machine has 2 cores shared with other work "
        f"(1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), so "
        "absolute figures move between runs; policies are measured interleaved (every policy "
        "at a rate before the next rate) so that they see the same background load.",
        "",
        f"Physical limit (max over b of b / p50 latency(b), the best of a measurement before "
        f"and one after the runs): **{physical_qps:.0f}/s** (batch {best_b}).",
        "",
        "| policy | sustainable rate (/s) | vs best baseline | of physical limit | "
        "p99 at sustainable (ms) | goodput at 2x (/s) | goodput at 2x / sustainable |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        vs = r.sustainable_qps / best.sustainable_qps if best.sustainable_qps else float("nan")
        keep = r.overload_goodput_qps / r.sustainable_qps if r.sustainable_qps else float("nan")
        lines.append(
            f"| {r.label} | {r.sustainable_qps:.0f} | {vs:.2f}x | "
            f"{r.sustainable_qps / physical_qps:.0%} | {r.p99_ms:.1f} | "
            f"{r.overload_goodput_qps:.0f} | {keep:.0%} |"
        )
    goals = [
        ("sustainable rate >= 1.3x the best baseline's", ratio >= 1.3, f"{ratio:.2f}x"),
        ("sustainable rate >= 85% of the physical limit", of_limit >= 0.85, f"{of_limit:.0%}"),
        ("goodput at 2x overload >= 90% of sustainable", overload_keep >= 0.9,
         f"{overload_keep:.0%}"),
    ]  # fmt: skip
    lines += ["", "Goals:", ""]
    for text, met, value in goals:
        lines.append(f"- {'met' if met else 'NOT met'}: {text} ({value})")
    lines += ["", "Latency profile used (execution only, ms):", "", "| batch | p50 | p90 | p99 |",
              "|---:|---:|---:|---:|"]  # fmt: skip
    for p in profiles:
        lines.append(f"| {p.batch_size} | {p.p50_ms:.2f} | {p.p90_ms:.2f} | {p.p99_ms:.2f} |")
    lines += ["", "Attainment per rate:", ""]
    for r in results:
        pts = ", ".join(f"{rate:.0f}/s: {att:.1%}" for rate, att in r.curve)
        lines.append(f"- {r.label}: {pts}")
    lines += [
        "",
        "![attainment vs rate](batching.png)",
        "",
        "See also `batching-sim.md` (the same policy objects on simulated time with the "
        "idle-machine profile: repeatable, free of the background load) and "
        "`batching-fastloop.md` (the router's fast loop against weights-only routing).",
        "",
    ]
    (RESULTS / "batching.md").write_text("\n".join(lines))
    (RESULTS / "batching.json").write_text(
        json.dumps(
            {
                "physical_qps": physical_qps,
                "results": [r.__dict__ for r in results],
            },
            indent=1,
        )
    )
    plot(results, physical_qps, RESULTS / "batching.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
