"""Render bench/results/cellular.md from the live run's cellular.json (bench/cellular/run.py).

Usage: .venv/bin/python bench/cellular/report.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def fmt(x: float) -> str:
    return "inf (misses)" if math.isinf(x) else f"{x:.0f}"


def ladder_table(configs: dict[str, Any]) -> list[str]:
    """Attainment (and p99) of every configuration at every rate of the ladder."""
    rates = sorted({r for c in configs.values() for r, _, _ in c["runs"]})
    lines = [
        "| rate (req/s) | " + " | ".join(configs) + " |",
        "|---:|" + "---:|" * len(configs),
    ]
    for rate in rates:
        cells = []
        for c in configs.values():
            there = [(a, p) for r, a, p in c["runs"] if r == rate]
            cells.append(f"{100 * there[0][0]:.1f}% / {fmt(there[0][1])}" if there else "")
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    return ["Attainment / p99 (ms) per rate:", "", *lines, ""]


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Batching inside the model: cellular and node-level vs request-level (live)",
        "",
        f"Run {results['when']} by `bench/cellular/run.py`: one worker process per "
        "configuration (`accordion.workers serve`, KServe v2 binary tensors over HTTP, one torch "
        "thread, `OMP_NUM_THREADS=1`), the same open-loop load from the benchmark process, on "
        "this machine's 2 shared cores (other agents' jobs ran beside it: the figures are "
        "noisy). All configurations of a workload run at once and are measured on a ladder of "
        "Poisson (or bursty) rates, interleaved rate by rate so that the background load hits "
        "all alike; a configuration leaves the ladder after two failures in a row. Sustainable "
        "rate: the highest rate measured with >= 99% of requests answered within the SLO at "
        "the client (each measurement 6 s of load); a refused or dropped request counts as a "
        "miss.",
        "",
    ]
    seq = results.get("sequences")
    if seq:
        configs = seq["configs"]
        best = seq["best_baseline"]
        cell = configs["cellular (ours)"]
        lines += [
            "## Variable-length sequences: builtin:gru-seq (GRU, hidden 512), SLO 500 ms",
            "",
            f"Request lengths lognormal, median 48 steps, mean {seq['mean_length']:.1f}, capped "
            "at 384. Request-level baselines run on the same model and machinery: a batch of "
            "whole requests runs until its longest member finishes, nobody joins it (members "
            "that finish early are answered at once).",
            "",
            f"| configuration | sustainable rate (req/s) | p99 at {seq['equal_rate']:.0f} req/s "
            "(ms) | attainment there |",
            "|---|---:|---:|---:|",
        ]
        for label, c in configs.items():
            p99 = c.get("equal_rate_p99_ms")
            att = c.get("equal_rate_attainment")
            lines.append(
                f"| {label} | {c['rate']:.0f} | {'' if p99 is None else fmt(p99)} | "
                f"{'' if att is None else f'{100 * att:.2f}%'} |"
            )
        ratio = cell["rate"] / configs[best]["rate"] if configs[best]["rate"] else math.inf
        p99_ratio = configs[best].get("equal_rate_p99_ms", math.nan) / cell.get(
            "equal_rate_p99_ms", math.nan
        )
        goal_rate = "met" if ratio >= 1.5 else "MISSED"
        goal_p99 = "met" if p99_ratio >= 2 else "MISSED"
        lines += [
            "",
            f"Best request-level baseline: {best}. Cellular: **{ratio:.2f}x** its sustainable "
            f"rate (goal >= 1.5x: {goal_rate}); p99 at equal rate **{p99_ratio:.2f}x** lower "
            f"(goal >= 2x: {goal_p99}).",
            "",
            *ladder_table(configs),
        ]
    cnn = results.get("cnn")
    if cnn:
        lines += [
            "## Feed-forward: builtin:cnn-deep (10 conv stages), SLO 100 ms",
            "",
            "| arrivals | configuration | sustainable rate (req/s) | node-level attainment at "
            "the request-level rate |",
            "|---|---|---:|---:|",
        ]
        for arrivals, per in cnn.items():
            for label, c in per.items():
                att = c.get("attainment_at_baseline_rate")
                lines.append(
                    f"| {arrivals} | {label} | {c['rate']:.0f} | "
                    f"{'' if att is None else f'{100 * att:.2f}%'} |"
                )
        lines.append("")
        for arrivals, per in cnn.items():
            lines += [f"{arrivals}:", "", *ladder_table(per)]
    lines += [
        "Per-rate measurements (attainment, p99) are in `cellular.log`; the same schedulers on "
        "simulated time, on profiles measured on this machine, in `cellular-sim.md`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    results = json.loads((RESULTS / "cellular.json").read_text())
    (RESULTS / "cellular.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
