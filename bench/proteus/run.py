"""Head-to-head against Proteus on its own workload and on generated ones, in the simulator.

Proteus's end-to-end setting: 40 devices (10 CPU, 10 VPU running the CPU profile, 10 Ampere,
10 Pascal GPUs), batch sizes 1, 2, 4, 8, SLO 300 ms, the profiles from its artifact, and its
traces. Every policy runs in the same simulator on the same trace, profiles and cluster, with
the same physics: one model per device (a replica that replaces another on a full pool loads
only once that one has freed its device, as Kubernetes schedules GPUs), a 2 s model load.

Ours is the product: the operator's `ControlLoop` at its default timings and planner settings,
driving simulated Kubernetes objects (`accordion.sim.driver`), with the InferenceServices a
user would write for these families (the API's defaults: headroom 0.1, burst buffer Auto).

* zipf_exponential/300 with the profiles' p50 as constant service time (as the artifact);
* the same trace with service times drawn from the profile (``dist``);
* medium-normal_load/300 (1.5x the load), p50;
* ``bursty.rates``: ~150 -> ~1,100 req/s within 1 s, three bursts of ~45 s (workloads.py);
* ``overload.rates``: equal demand per family, up to 3x what the cluster can serve;
* optionally (``--scale 10``) 10x the devices and 10x the zipf demand: ours and Proteus;
* optionally (``--timings``) ours at the default timings and at alternatives, the measurement
  behind `control/timing.py`'s defaults (``proteus_timings.md``);
* optionally (``--shapes``) every policy on six shapes no goal names, and ours on bursty and
  overload, at three arrival seeds each (`shapes.py`, ``proteus_shapes.md``).

The oracle bound (per-second LP relaxation with perfect demand knowledge) is computed in the
same run. Writes ``bench/results/proteus.md``, a PNG timeline per run and one of our capacity
by kind per family. Reads the data from ``<repo>/../shared/data/proteus``; it is never copied
into the repository.

    .venv/bin/python bench/proteus/run.py [--scale 10] [--timings] [--shapes] [--only zipf-p50]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.operator.control.timing import DEFAULT_TIMINGS, Timings
from accordion.sim.catalog import POLICIES, make_control_policy
from accordion.sim.engine import SimConfig, SimResult, simulate
from accordion.sim.oracle import OracleBound, oracle_bound
from accordion.sim.policies import Accordion
from accordion.sim.policy import ControlPolicy
from accordion.sim.report import markdown_table, plot, plot_capacity, write_csv
from accordion.sim.workload import (
    Cluster,
    Workload,
    load_proteus_cluster,
    read_proteus_trace,
    read_rate_trace,
)
from bench.proteus.shapes import shapes_report

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "proteus"
RESULTS = REPO / "bench" / "results"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Run:
    key: str
    trace: str
    service_time: str
    scale: int = 1
    policies: tuple[str, ...] = tuple(POLICIES)
    goal: tuple[float, float] | None = None
    """(violation ratio under, effective accuracy at least) from the issue."""


FEW = ("accordion", "accordion-noburst", "proteus", "clipper-ht", "hardware-only")

RUNS = (
    Run("zipf-p50", "zipf_exponential/300", "p50", goal=(0.001, 99.55)),
    Run("zipf-dist", "zipf_exponential/300", "dist", goal=(0.001, 99.55)),
    Run("normal-1.5x-p50", "medium-normal_load/300", "p50", goal=(0.003, 99.45)),
    Run("bursty", "bursty.rates", "p50", goal=(0.01, 99.3)),
    Run("overload", "overload.rates", "p50", policies=FEW),
)


def load_workload(run: Run, cluster: Cluster) -> Workload:
    if run.trace.endswith(".rates"):
        slo = {f.name: f.slo_s for f in cluster.families}
        return read_rate_trace(HERE / run.trace, slo)
    workload = read_proteus_trace(DATA / "traces" / run.trace)
    return workload.scaled(run.scale) if run.scale > 1 else workload


def run_one(
    run: Run, cluster: Cluster, workload: Workload, policies: dict[str, ControlPolicy]
) -> tuple[list[SimResult], OracleBound]:
    results = []
    for name, policy in policies.items():
        started = time.perf_counter()
        result = simulate(cluster, workload, policy, SimConfig(service_time=run.service_time))
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


def starved_seconds(result: SimResult, bound: OracleBound, families: list[str]) -> dict[str, int]:
    """Per family: seconds in which it had no ready replica while the oracle served it."""
    oracle = {o.second: o for o in bound.seconds}
    out: dict[str, int] = {}
    for i, fam in enumerate(families):
        n = 0
        for sec, sample, _ in result.timeline.get(fam, []):
            o = oracle.get(sec)
            served = o.served_by_family[i] if o is not None and o.served_by_family else 0.0
            if sample.planned_qps + sample.spare_qps <= 0 and served >= 1.0:
                n += 1
        if n:
            out[fam] = n
    return out


def goals(run: Run, results: list[SimResult], bound: OracleBound, workload: Workload) -> str:
    """The issue's goals for this run, checked: met or missed, with the figures."""
    by = {r.summary.policy: r for r in results}
    ours = by.get("accordion")
    if ours is None:
        return ""
    s = ours.summary
    lines = []
    if run.goal is not None:
        limit, accuracy = run.goal
        met = s.violation_ratio <= limit and s.effective_accuracy >= accuracy
        lines.append(
            f"- goal: ours at most {limit:.1%} violations at effective accuracy >= {accuracy}: "
            f"{'met' if met else 'MISSED'} ({s.violation_ratio:.2%} at "
            f"{s.effective_accuracy:.2f})"
        )
    if run.key == "overload":
        oracle = 1 - bound.served_fraction
        met = s.violation_ratio <= oracle + 0.03
        lines.append(
            f"- goal: violations within 3 points of the oracle bound: "
            f"{'met' if met else 'MISSED'} ({s.violation_ratio:.2%} vs {oracle:.2%}, "
            f"{100 * (s.violation_ratio - oracle):+.1f} points)"
        )
        starved = starved_seconds(ours, bound, workload.families)
        lines.append(
            "- goal: no family at zero replicas while the oracle serves it: "
            + ("met (no such second)" if not starved else f"MISSED ({starved} seconds)")
        )
    proteus = by.get("proteus")
    if proteus is not None and s.violation_ratio > 0:
        factor = proteus.summary.violation_ratio / s.violation_ratio
        lines.append(
            f"- Proteus: {factor:.1f}x our violations, accuracy "
            f"{proteus.summary.effective_accuracy:.2f} vs ours {s.effective_accuracy:.2f} "
            f"(mix-weighted {proteus.summary.mix_accuracy:.3f} vs {s.mix_accuracy:.3f})"
        )
    return "\n".join(lines) + "\n"


def family_table(results: list[SimResult]) -> str:
    """Per family: violations and effective accuracy of ours and Proteus."""
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


TIMING_VARIANTS: dict[str, Timings] = {
    "default": DEFAULT_TIMINGS,
    "operator before (30 s / 300 s half-lives)": dataclasses.replace(
        DEFAULT_TIMINGS, rise_half_life_s=30.0, fall_half_life_s=300.0
    ),
    "slower falls (120 s)": dataclasses.replace(DEFAULT_TIMINGS, fall_half_life_s=120.0),
    "measure every 0.5 s": dataclasses.replace(
        DEFAULT_TIMINGS, demand_interval_s=0.5, min_pass_interval_s=0.5
    ),
    "no band (hysteresis 0)": dataclasses.replace(DEFAULT_TIMINGS, hysteresis=0.0),
    "wide band (hysteresis 0.3)": dataclasses.replace(DEFAULT_TIMINGS, hysteresis=0.3),
    "passes every 5 s at most": dataclasses.replace(DEFAULT_TIMINGS, min_pass_interval_s=5.0),
}


def timings_report(out: Path) -> None:
    """Ours at the default timings and at alternatives on two workloads (`TIMING_VARIANTS`)."""
    lines = [
        "# The control loop's timings, measured (bench/proteus/run.py --timings)\n",
        f"{platform.node()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Ours (the "
        "product's loop) on the Proteus cluster, p50 service times; only the timing named "
        "changes.\n",
        "| timings | zipf violations | zipf accuracy | bursty violations | bursty accuracy | "
        "re-plans (zipf, bursty) |",
        "|---|---|---|---|---|---|",
    ]
    cluster = load_proteus_cluster(DATA)
    runs = [r for r in RUNS if r.key in ("zipf-p50", "bursty")]
    for label, timings in TIMING_VARIANTS.items():
        cells = []
        replans = []
        for run in runs:
            workload = load_workload(run, cluster)
            result = simulate(
                cluster, workload, Accordion(timings=timings), SimConfig(service_time="p50")
            )
            s = result.summary
            cells += [f"{s.violation_ratio:.2%}", f"{s.effective_accuracy:.2f}"]
            replans.append(str(s.replans))
            print(f"  {label} {run.key}: {s.violation_ratio:.3%} at {s.effective_accuracy:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {', '.join(replans)} |")
    (out / "proteus_timings.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", action="append", help="run keys to run (default: all)")
    parser.add_argument(
        "--scale", type=int, default=0, help="instead: N x devices and demand (proteus_scale.md)"
    )
    parser.add_argument("--timings", action="store_true", help="instead: proteus_timings.md")
    parser.add_argument("--shapes", action="store_true", help="instead: proteus_shapes.md")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: the benchmark needs the shared Proteus data")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.timings:
        timings_report(args.out)
        return
    if args.shapes:
        shapes_report(args.out)
        return
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
    sections = [
        "# Accordion vs Proteus and the baselines (trace-driven simulator)\n",
        f"Generated by `bench/proteus/run.py` on {platform.node()} "
        f"({platform.processor() or platform.machine()}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Cluster: 10 CPU, 10 VPU (CPU "
        "profile), 10 Ampere, 10 Pascal per unit of scale; batch sizes 1, 2, 4, 8; SLO 300 ms; "
        "one model per device, 2 s model load, for every policy. Ours is the product (the "
        "operator's control loop at its defaults, see the module docstring). Violations = "
        "(late + dropped) / demand. Effective accuracy = mean Normalized_Accuracy of requests "
        "served within their deadline. Max accuracy drop = 100 - lowest effective accuracy "
        "over 10-s windows. Planner time: wall time per planner call (ours: the main and the "
        "spare plan of a pass; Proteus: its MILP with beta back-off, every 10 s).\n",
    ]
    for run in runs:
        print(f"{run.key}: {run.trace}, service time {run.service_time}, x{run.scale}", flush=True)
        cluster = load_proteus_cluster(DATA, devices_per_pool=10 * run.scale)
        workload = load_workload(run, cluster)
        policies = {name: make_control_policy(name) for name in run.policies}
        results, bound = run_one(run, cluster, workload, policies)
        png = f"proteus_{run.key}.png"
        plot(args.out / png, results, f"{run.trace}, service time {run.service_time}, x{run.scale}")
        ours = next((r for r in results if r.summary.policy == "accordion"), None)
        capacity_png = f"proteus_{run.key}_capacity.png"
        if ours is not None:
            plot_capacity(
                args.out / capacity_png,
                ours,
                f"ours on {run.trace}: capacity by kind per family (planned, spare, loading)",
            )
        write_csv(args.out / f"proteus_{run.key}.csv", results)
        sections.append(
            f"\n## {run.key}: `{run.trace}`, service time {run.service_time}, "
            f"{len(workload)} requests, {40 * run.scale} devices\n\n"
            + markdown_table(results, bound)
            + f"\nOracle bound: serves {bound.served_fraction:.2%} at effective accuracy "
            f"{bound.effective_accuracy:.2f}.\n\n"
            + goals(run, results, bound, workload)
            + "\n"
            + ratios(results)
            + "\nPer family (ours and Proteus):\n\n"
            + family_table(results)
            + f"\n![{run.key}]({png})\n"
            + (f"\n![{run.key}: our capacity]({capacity_png})\n" if ours is not None else "")
        )
        (args.out / report).write_text("".join(sections))
    notes = HERE / "NOTES.md"
    if report == "proteus.md" and notes.exists():
        (args.out / report).write_text("".join(sections) + notes.read_text())
    print(f"wrote {args.out / report}")


if __name__ == "__main__":
    main()
