"""Head-to-head against Proteus on its own workload, in the trace-driven simulator.

Proteus's end-to-end setting: 40 devices (10 CPU, 10 VPU running the CPU profile, 10 Ampere,
10 Pascal GPUs), batch sizes 1, 2, 4, 8, SLO 300 ms, the profiles from its artifact, and its
traces. Every policy runs in the same simulator on the same trace, profiles and cluster:

* zipf_exponential/300 with the profiles' p50 as constant service time (as the artifact);
* the same trace with service times drawn from the profile (p50 median, p90 at the 90th
  percentile: ``dist``), so that execution times vary and late responses become possible;
* medium-normal_load/300 (1.5x the load), p50;
* optionally (``--scale 10``) 10x the devices and 10x the demand: ours (fast loop on and off)
  and Proteus only.

The oracle bound (per-second LP relaxation with perfect demand knowledge) is computed in the
same run. Writes ``bench/results/proteus.md`` and a PNG timeline per run. Reads the data from
``<repo>/../shared/data/proteus``; it is never copied into the repository.

    .venv/bin/python bench/proteus/run.py [--scale 10] [--only zipf-p50]
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from accordion.sim.catalog import POLICIES, make_control_policy
from accordion.sim.engine import SimConfig, SimResult, simulate
from accordion.sim.oracle import OracleBound, oracle_bound
from accordion.sim.report import markdown_table, plot, write_csv
from accordion.sim.workload import Cluster, Workload, load_proteus_cluster, read_proteus_trace

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "proteus"
RESULTS = REPO / "bench" / "results"


@dataclass(frozen=True)
class Run:
    key: str
    trace: str
    service_time: str
    scale: int = 1
    policies: tuple[str, ...] = tuple(POLICIES)


RUNS = (
    Run("zipf-p50", "zipf_exponential/300", "p50"),
    Run("zipf-dist", "zipf_exponential/300", "dist"),
    Run("normal-1.5x-p50", "medium-normal_load/300", "p50"),
)


def run_one(run: Run, cluster: Cluster, workload: Workload) -> tuple[list[SimResult], OracleBound]:
    results = []
    for name in run.policies:
        started = time.perf_counter()
        result = simulate(
            cluster, workload, make_control_policy(name), SimConfig(service_time=run.service_time)
        )
        s = result.summary
        print(
            f"  {name:18s} violations {s.violation_ratio:7.3%} (late {s.late}, dropped "
            f"{s.dropped}) accuracy {s.effective_accuracy:6.2f} in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        results.append(result)
    bound = oracle_bound(cluster, workload, "p50")
    return results, bound


def ratios(results: list[SimResult]) -> str:
    by = {r.summary.policy: r.summary for r in results}
    ours = by.get("accordion")
    if ours is None:
        return ""
    lines = []
    for name, s in by.items():
        if name == "accordion":
            continue
        if ours.violation_ratio > 0:
            factor = f"{s.violation_ratio / ours.violation_ratio:.1f}x"
        else:
            factor = "inf" if s.violation_ratio > 0 else "1x"
        lines.append(
            f"- {name}: {factor} our violations, accuracy "
            f"{ours.effective_accuracy - s.effective_accuracy:+.2f} points"
        )
    return "\n".join(lines) + "\n"


NOTES_FILE = Path(__file__).with_name("NOTES.md")

GOALS = {"zipf-p50": 0.01, "zipf-dist": 0.01, "normal-1.5x-p50": 0.02}


def goals(key: str, results: list[SimResult]) -> str:
    """The issue's goals for this run, checked: met or missed, with the figures."""
    by = {r.summary.policy: r.summary for r in results}
    ours, proteus = by.get("accordion"), by.get("proteus")
    if ours is None:
        return ""
    lines = []
    limit = GOALS.get(key)
    if limit is not None:
        met = ours.violation_ratio < limit and ours.effective_accuracy >= 99.3
        lines.append(
            f"- goal: ours under {limit:.0%} violations at effective accuracy >= 99.3: "
            f"{'met' if met else 'MISSED'} ({ours.violation_ratio:.2%} at "
            f"{ours.effective_accuracy:.2f})"
        )
    if proteus is not None:
        factor = proteus.violation_ratio / max(ours.violation_ratio, 1e-12)
        met = factor >= 5 and ours.effective_accuracy >= proteus.effective_accuracy - 1e-9
        lines.append(
            f"- goal: >= 5x fewer violations than Proteus at equal or better accuracy: "
            f"{'met' if met else 'MISSED'} ({factor:.1f}x, accuracy "
            f"{ours.effective_accuracy:.2f} vs {proteus.effective_accuracy:.2f})"
        )
        mix_met = factor >= 5 and ours.mix_accuracy >= proteus.mix_accuracy - 1e-9
        lines.append(
            f"- the same on mix-weighted accuracy (each family's accuracy weighted by its "
            f"demand, so that dropping a less accurate family gains nothing): "
            f"{'met' if mix_met else 'MISSED'} ({ours.mix_accuracy:.3f} vs "
            f"{proteus.mix_accuracy:.3f})"
        )
    return "\n".join(lines) + "\n"


def family_table(results: list[SimResult]) -> str:
    """Per family: violations and effective accuracy of ours (fast loop on) and Proteus."""
    by = {r.summary.policy: r for r in results}
    shown = [p for p in ("accordion", "proteus") if p in by]
    if not shown:
        return ""
    head = "| family | demand | " + " | ".join(
        f"{p} violations % | {p} eff. accuracy" for p in shown
    )
    lines = [head + " |", "|---|---|" + "---|---|" * len(shown)]
    for family in by[shown[0]].families:
        demand = by[shown[0]].families[family][0]
        cells = [family, str(demand)]
        for p in shown:
            n, ok, acc = by[p].families[family]
            cells += [f"{1 - ok / n:.2%}" if n else "-", f"{acc:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run keys to run (default: all)")
    parser.add_argument(
        "--scale", type=int, default=0, help="instead: N x devices and demand (proteus_scale.md)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the benchmark needs the shared Proteus data")
    runs = [r for r in RUNS if not args.only or r.key in args.only]
    report = "proteus.md"
    if args.scale > 1:
        report = "proteus_scale.md"
        runs = [
            Run(
                f"zipf-p50-x{args.scale}",
                "zipf_exponential/300",
                "p50",
                scale=args.scale,
                policies=("accordion", "accordion-nofast", "proteus"),
            )
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Accordion vs Proteus on Proteus's workload (trace-driven simulator)\n",
        f"Generated by `bench/proteus/run.py` on {platform.node()} "
        f"({platform.processor() or platform.machine()}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Cluster: 10 CPU, 10 VPU (CPU "
        "profile), 10 Ampere, 10 Pascal per unit of scale; batch sizes 1, 2, 4, 8; SLO 300 ms. "
        "Violations = (late + dropped) / demand, late responses counted. Effective accuracy = "
        "mean Normalized_Accuracy of requests served within their deadline. Max accuracy drop = "
        "100 - lowest effective accuracy over 10-s windows. Planner time: wall time per "
        "re-plan (ours: the operator's planner, every 5 s; Proteus: its MILP with beta "
        "back-off, every 10 s).\n",
    ]
    for run in runs:
        print(f"{run.key}: {run.trace}, service time {run.service_time}, x{run.scale}", flush=True)
        cluster = load_proteus_cluster(DATA, devices_per_pool=10 * run.scale)
        workload = read_proteus_trace(DATA / "traces" / run.trace)
        if run.scale > 1:
            workload = workload.scaled(run.scale)
        results, bound = run_one(run, cluster, workload)
        png = f"proteus_{run.key}.png"
        plot(args.out / png, results, f"{run.trace}, service time {run.service_time}, x{run.scale}")
        write_csv(args.out / f"proteus_{run.key}.csv", results)
        sections.append(
            f"\n## {run.key}: `{run.trace}`, service time {run.service_time}, "
            f"{len(workload)} requests, {40 * run.scale} devices\n\n"
            + markdown_table(results, bound)
            + f"\nOracle bound: serves {bound.served_fraction:.2%} at effective accuracy "
            f"{bound.effective_accuracy:.2f}.\n\n"
            + goals(run.key, results)
            + "\n"
            + ratios(results)
            + "\nPer family (ours, fast loop on, and Proteus):\n\n"
            + family_table(results)
            + f"\n![{run.key}]({png})\n"
        )
        (args.out / report).write_text("".join(sections))
    if report == "proteus.md" and NOTES_FILE.exists():
        (args.out / report).write_text("".join(sections) + NOTES_FILE.read_text())
    print(f"wrote {args.out / report}")


if __name__ == "__main__":
    main()
