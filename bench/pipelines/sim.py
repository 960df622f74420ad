"""Pipelines on vs off in the product's simulator, on the low-class-rich cluster of run.py.

`run.py` checks its plans with a queueing model of its own; this scenario runs the product
instead: the simulator's engine with the operator's `ControlLoop` (`accordion.sim.driver`,
`accordion.sim.pipelines`: each stage a worker group with the SLO batcher against its share of
the deadline, hand-overs over the link, deadlines travelling), the router's `RoutingDecider`,
demand measured as a router reports it. Same cluster (cpu 24, vpu 24, gpu-pascal 2, gpu-ampere
2), same per-part profiles (run.py's: the parts table of ``bench/results/pipelines.md``, the
measurement the queueing check's figures come from, scaled to each pool by Proteus's
whole-model profile ratios), same SLO (300 ms), one service with one variant (equal accuracy),
the same Poisson demand for both runs (4x what whole variants can plan, as in run.py).
Pipelines off: the operator's planner configuration `pipeline_max_stages: 1` (README); on: its
default (2). Served within SLO: requests answered by their deadline over the run; low-class
busy: the batches' execution time on the CPUs and VPUs over all 48 of them and the run.

    flock /tmp/accordion-heavy.lock .venv/bin/python bench/pipelines/sim.py [--seconds 60]

Prints a markdown section; `--write` puts it at the end of ``bench/results/pipelines.md``
(replacing the section of an earlier run; run.py keeps it, as the data plane's).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from accordion.sim.engine import SimConfig, Simulator
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload, load_proteus_cluster
from accordion.solver import PlannerSettings, PoolSpec, VariantSpec, plan
from accordion.workers.profiler import BatchProfile
from accordion.workers.splitting import PartProfile

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from bench.pipelines.run import (  # noqa: E402  (the same cluster, SLO and scaling)
    CLUSTER,
    DATA,
    LOW_CLASS,
    RESULTS,
    SIZES,
    SLO_S,
    VARIANTS,
    Measured,
    problem,
    with_stages,
)

SECTION = "## In the simulator: pipelines on vs off"


def measured_from(results: str) -> Measured:
    """run.py's measurement of the parts, read back from its table (p50 per batch size, the
    only figure its per-pool scaling uses)."""
    parts: list[PartProfile] = []
    whole: dict[int, float] = {}
    for line in results.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 + len(SIZES):
            continue
        name, shape, size = cells[:3]
        try:
            ms = [float(c) for c in cells[3:]]
        except ValueError:
            continue
        if name == "whole model":
            whole = dict(zip(SIZES, ms, strict=True))
        elif re.fullmatch(r"[A-Za-z0-9_.]+", name) and shape:
            parts.append(
                PartProfile(
                    name=name,
                    output_shape=tuple(int(d) for d in shape.split("x")),
                    output_bytes=int(size.replace(",", "")),
                    profiles=[BatchProfile(b, m, m, m) for b, m in zip(SIZES, ms, strict=True)],
                )
            )
    if not parts or not whole:
        raise SystemExit("no parts table in the results file: run bench/pipelines/run.py first")
    return Measured(parts, whole)


def poisson(rate: float, seconds: float, slo_s: float, seed: int) -> Workload:
    rng = random.Random(seed)
    arrivals: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        arrivals.append(t)
        t += rng.expovariate(rate)
    return Workload(
        families=["resnet"],
        arrival_s=arrivals,
        family=[0] * len(arrivals),
        deadline_s=[a + slo_s for a in arrivals],
    )


@dataclass
class Outcome:
    arrivals: int
    ok: int
    late: int
    dropped: int
    low_busy: float
    """Share of the low-class devices' time spent running batches."""
    planned_qps: float
    pipeline_rows: list[str]
    wall_s: float


def simulate(
    variant: VariantSpec, demand: float, seconds: float, stages: int, service_time: str, seed: int
) -> Outcome:
    cluster = Cluster(
        pools=tuple(PoolSpec(name=n, devices=d) for n, d in CLUSTER.items()),
        families=(Family(name="resnet", slo_s=SLO_S, variants=(variant,)),),
    )
    sim = Simulator(
        cluster,
        poisson(demand, seconds, SLO_S, seed=seed),
        Accordion(planner=PlannerSettings(pipeline_max_stages=stages)),
        SimConfig(seed=seed, service_time=service_time, end_s=seconds),
    )
    started = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - started
    s = result.summary
    low = sum(CLUSTER[p] for p in LOW_CLASS)
    busy = sum(sim.busy_s_by_pool.get(p, 0.0) for p in LOW_CLASS) / (low * seconds)
    last = sim.control.loop.last_plan  # type: ignore[attr-defined]
    rows = [
        f"{r.replicas} x `{r.pipeline}` (batch caps {[st.max_batch_size for st in r.stages]})"
        if r.pipeline
        else f"{r.replicas} x whole on {r.pool} (batch cap {r.max_batch_size})"
        for r in (last.rows if last is not None else [])
    ]
    planned = last.services[0].served_qps if last is not None else 0.0
    return Outcome(
        arrivals=len(result.outcome),
        ok=s.ok,
        late=s.late,
        dropped=s.dropped,
        low_busy=busy,
        planned_qps=planned,
        pipeline_rows=rows,
        wall_s=wall,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--service-time",
        choices=("p50", "p90", "dist"),
        default="p90",
        help="the simulator's service times (SimConfig.service_time); the planner is given "
        "their percentiles as a user would measure them. p90: the profiles run.py's planner "
        "planned with (Proteus has no p99), so the same plans as its queueing check",
    )
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0, help="of the arrivals and the run")
    parser.add_argument("--write", action="store_true", help="into bench/results/pipelines.md")
    args = parser.parse_args()
    path = RESULTS / "pipelines.md"
    previous = path.read_text()
    measured = measured_from(previous)
    cluster = load_proteus_cluster(DATA, devices_per_pool=1)
    resnets = {v.name: v for fam in cluster.families for v in fam.variants}
    lines = [
        SECTION,
        "",
        f"`bench/pipelines/sim.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{args.seconds:.0f} s of Poisson demand per run (seed {args.seed}), service times "
        f"`SimConfig(service_time='{args.service_time}')` (the operator's planner is given the "
        "percentiles of what the simulator draws, as a user would measure them). Planned: the "
        "last plan's served req/s.",
        "",
        "| variant | demand req/s | off: planned | off: within SLO | on: planned "
        "| on: within SLO | gain | late / dropped (off -> on) | low-class busy (off -> on) "
        "| queueing check (whole -> pipelines) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name in args.variants:
        variant = with_stages(resnets[name], measured)
        probe = plan(problem(variant, 1e5, stages=1))
        demand = 4 * max(probe.services[0].capacity_qps, 1.0)
        off = simulate(variant, demand, args.seconds, 1, args.service_time, args.seed)
        on = simulate(variant, demand, args.seconds, 2, args.service_time, args.seed)
        w, p = off.ok / args.seconds, on.ok / args.seconds
        gain = (p / w - 1) * 100 if w > 0 else float("inf")
        check = _check_figures(previous, name)
        lines.append(
            f"| {name} | {demand:.0f} | {off.planned_qps:.0f} | {w:.0f} | {on.planned_qps:.0f} "
            f"| {p:.0f} | {gain:+.0f}% | {off.late}/{off.dropped} -> {on.late}/{on.dropped} "
            f"| {off.low_busy:.0%} -> {on.low_busy:.0%} | {check} |"
        )
        notes.append(
            f"- {name}: last plan, pipelines on: {'; '.join(on.pipeline_rows) or 'none'} "
            f"(simulated in {off.wall_s:.0f} s / {on.wall_s:.0f} s)"
        )
        print(lines[-1], flush=True)
    lines += ["", f"Last plans of the runs with pipelines ({args.service_time}):", "", *notes, ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        body = previous
        if SECTION in body:
            start = body.index(SECTION)
            end = body.find("\n## ", start + len(SECTION))
            body = body[:start] + body[end + 1 :] if end >= 0 else body[:start]
        # At the end, after the data plane's section, which run.py keeps as it is.
        path.write_text(body.rstrip("\n") + "\n\n" + text)


def _check_figures(results: str, variant: str) -> str:
    """The queueing check's within-SLO figures (whole -> pipelines) for `variant`, from the
    results file's main table."""
    for line in results.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[0] == variant:
            return f"{cells[4]} -> {cells[6]} ({cells[7]})"
    return "n/a"


if __name__ == "__main__":
    main()
