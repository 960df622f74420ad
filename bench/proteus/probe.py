"""Ours against the committed figures, with a candidate change: the check a rule must pass.

On these traces a change to the control loop moves one run's figure by 0.1-0.3 points by luck
alone (bursty's three seeds spread 0.3 points under every rule tried; `NOTES.md`), so a rule
read off one run is not a rule. This runs ours on every held-out shape and on the goal traces
bursty and overload at seeds 0 / 1 / 2 (the cells of ``bench/results/proteus_shapes.json``) and,
with ``--goals``, on the fixed Proteus traces of ``proteus.md`` (zipf-p50, zipf-dist, 1.5x),
each in a fresh process, and prints every cell beside its committed figure with the mean per
trace. ``--patch FILE`` runs a Python file in each cell's process before its simulation: a
candidate rule written as a change to the imported modules (say, a method of
`accordion.operator.control.loop.ControlLoop` replaced), so that it can be judged on every
shape and seed before the loop itself is edited. Without a patch it checks that the committed
figures still hold.

Run it alone (under the heavy lock, as ``make bench-proteus``): the planner's searches have time
limits, so a loaded machine changes its plans (NOTES.md: a bursty run beside other heavy work
gave 2.12% against 1.41% alone).

    flock /tmp/accordion-heavy.lock .venv/bin/python bench/proteus/probe.py \\
        [--patch my_rule.py] [--traces spikes,bursty] [--seeds 0,1,2] [--goals] [--no-overload]
"""

from __future__ import annotations

import argparse
import csv
import json
import runpy
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.sim.catalog import make_control_policy
from accordion.sim.engine import SimConfig, simulate
from accordion.sim.workload import load_proteus_cluster
from bench.proteus.run import RESULTS, RUNS, Run, load_workload
from bench.proteus.shapes import GOAL_TRACES, SEEDS, Cell, run_cell
from bench.proteus.workloads import DATA, SHAPES

FIXED: dict[str, Run] = {r.key: r for r in RUNS if not r.trace.endswith(".rates")}
"""The goal runs of ``proteus.md`` on Proteus's own traces (arrivals fixed, no seed)."""


@dataclass(frozen=True)
class Job:
    """One run of ours: a rate file at a seed, or a fixed Proteus trace (seed None)."""

    trace: str
    seed: int | None
    patch: str | None = None


def run_job(job: Job) -> Cell:
    """Ours on one trace, after running the patch file (if any) in this process: the shapes'
    run (`shapes.run_cell`) for a rate file, `run.py`'s for a fixed trace. A patch changes what
    those look up when they run (a `ControlLoop` method, a module's attribute)."""
    if job.patch is not None:
        runpy.run_path(job.patch, run_name="__probe_patch__")
    if job.seed is not None:
        return run_cell(job.trace, "accordion", job.seed)
    run = FIXED[job.trace]
    cluster = load_proteus_cluster(DATA)
    config = SimConfig(service_time=run.service_time)
    s = simulate(cluster, load_workload(run, cluster), make_control_policy("accordion"), config)
    return Cell(job.trace, "accordion", -1, s.summary.violation_ratio, s.summary.effective_accuracy)


def committed_cells(results: Path = RESULTS) -> dict[tuple[str, int], Cell]:
    """Ours' committed figures by (trace, seed): the shapes' cells (``proteus_shapes.json``) and
    the fixed traces' (seed -1), summed from the per-second rows of ``proteus_<run>.csv``."""
    out: dict[tuple[str, int], Cell] = {}
    shapes = results / "proteus_shapes.json"
    if shapes.exists():
        for row in json.loads(shapes.read_text()):
            if row["policy"] == "accordion":
                cell = Cell(**row)
                out[(cell.trace, cell.seed)] = cell
    for key in FIXED:
        path = results / f"proteus_{key}.csv"
        if not path.exists():
            continue
        with path.open() as f:
            rows = [r for r in csv.DictReader(f) if r["policy"] == "accordion"]
        demand = sum(int(r["demand"]) for r in rows)
        ok = sum(int(r["ok"]) for r in rows)
        missed = sum(int(r["late"]) + int(r["dropped"]) for r in rows)
        accuracy = sum(float(r["effective_accuracy"]) * int(r["ok"]) for r in rows)
        if demand and ok:
            out[(key, -1)] = Cell(key, "accordion", -1, missed / demand, accuracy / ok)
    return out


def jobs(
    traces: list[str] | None, seeds: tuple[int, ...], goals: bool, overload: bool, patch: str | None
) -> list[Job]:
    """The runs to make: the named traces (rate files at every seed, fixed traces once), or
    every shape and goal rate file at every seed (overload, about 2.5 min a run, only with
    `overload`) and, with `goals`, the fixed traces."""
    rate_files = sorted(p.name for p in SHAPES.glob("*.rates")) + list(GOAL_TRACES)
    names = {n.removesuffix(".rates"): n for n in rate_files}
    if traces is None:
        traces = [n for n in names if overload or n != "overload"] + (list(FIXED) if goals else [])
    unknown = [t for t in traces if t not in names and t not in FIXED]
    if unknown:
        known = ", ".join([*names, *FIXED])
        raise SystemExit(f"unknown trace(s) {', '.join(unknown)}; known: {known}")
    return [
        job
        for t in traces
        for job in (
            [Job(names[t], seed, patch) for seed in seeds] if t in names else [Job(t, None, patch)]
        )
    ]


def report(cells: list[Cell], committed: dict[tuple[str, int], Cell], patch: str | None) -> str:
    """Every cell beside its committed figure, and each trace's mean over its seeds."""
    lines = [
        f"ours {'with ' + patch if patch else 'as committed'} against the committed figures",
        "",
        "| trace | seed | committed | now | change |",
        "|---|---|---|---|---|",
    ]
    by_trace: dict[str, list[tuple[Cell, Cell | None]]] = {}
    for cell in sorted(cells, key=lambda c: (c.trace, c.seed)):
        by_trace.setdefault(cell.trace, []).append((cell, committed.get((cell.trace, cell.seed))))
    for trace, pairs in by_trace.items():
        for cell, was in pairs:
            seed = "-" if cell.seed < 0 else str(cell.seed)
            lines.append(
                f"| {trace} | {seed} | {_fig(was)} | {_fig(cell)} | {_change(was, cell)} |"
            )
        if len(pairs) > 1:
            now = _mean([c for c, _ in pairs])
            olds = [w for _, w in pairs if w is not None]
            was = _mean(olds) if len(olds) == len(pairs) else None
            lines.append(f"| {trace} | mean | {_fig(was)} | {_fig(now)} | {_change(was, now)} |")
    return "\n".join(lines) + "\n"


def _mean(cells: list[Cell]) -> Cell:
    return Cell(
        cells[0].trace,
        "accordion",
        -1,
        statistics.fmean(c.violations for c in cells),
        statistics.fmean(c.accuracy for c in cells),
    )


def _fig(cell: Cell | None) -> str:
    return "-" if cell is None else f"{cell.violations:.3%} at {cell.accuracy:.2f}"


def _change(was: Cell | None, now: Cell) -> str:
    if was is None:
        return "-"
    return (
        f"{100 * (now.violations - was.violations):+.3f} points, "
        f"accuracy {now.accuracy - was.accuracy:+.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patch", type=Path, help="a Python file run before each simulation")
    parser.add_argument("--traces", help="comma-separated (default: every shape and goal trace)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--goals", action="store_true", help="also zipf-p50, zipf-dist, 1.5x")
    parser.add_argument("--no-overload", action="store_true", help="skip overload (slow)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.patch is not None and not args.patch.is_file():
        parser.error(f"--patch {args.patch}: no such file")
    patch = str(args.patch.resolve()) if args.patch is not None else None
    seeds = tuple(int(s) for s in args.seeds.split(","))
    traces = args.traces.split(",") if args.traces else None
    todo = jobs(traces, seeds, args.goals, not args.no_overload, patch)
    cells = []
    # A fresh process per run: the planner's caches make a warm process faster, and a run must
    # not depend on what ran before it (as `shapes.shapes_report`).
    with ProcessPoolExecutor(max_workers=args.workers, max_tasks_per_child=1) as pool:
        for done, cell in enumerate(pool.map(run_job, todo), 1):
            seed = "-" if cell.seed < 0 else cell.seed
            print(f"  [{done}/{len(todo)}] {cell.trace} seed {seed}: {_fig(cell)}", flush=True)
            cells.append(cell)
    print()
    print(report(cells, committed_cells(), patch))


if __name__ == "__main__":
    main()
