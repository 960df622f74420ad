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

`--family`: the scenario a user runs instead: one InferenceService over the whole resnet family
(every variant with its parts) at each `spec.accuracy.floor` from none to resnet152's, demand 4x
what whole placement plans at that floor, pipelines off vs on; served within SLO and effective
accuracy for both; a no-floor row at a demand both can serve (what each gives up in accuracy);
and resnet beside two whole-only families (`MIXED`) sharing the cluster.

Prints a markdown section; `--write` puts it at the end of ``bench/results/pipelines.md``
(replacing the section of an earlier run; run.py keeps it, as the data plane's).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from accordion.operator.api import InferenceService
from accordion.sim.driver import family_service
from accordion.sim.engine import SimConfig, Simulator
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload, load_proteus_cluster
from accordion.solver import (
    PlannerSettings,
    PoolSpec,
    Problem,
    ServiceSpec,
    VariantSpec,
    plan,
)
from accordion.workers.profiler import BatchProfile
from accordion.workers.splitting import PartProfile

if TYPE_CHECKING:
    from accordion.sim.engine import Control

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
    return poisson_mix({"resnet": rate}, seconds, slo_s, seed)


def poisson_mix(rates: Mapping[str, float], seconds: float, slo_s: float, seed: int) -> Workload:
    """Poisson arrivals of every family at its rate, merged in time."""
    rng = random.Random(seed)
    names = list(rates)
    arrivals: list[tuple[float, int]] = []
    for f, name in enumerate(names):
        t = rng.expovariate(rates[name])
        while t < seconds:
            arrivals.append((t, f))
            t += rng.expovariate(rates[name])
    arrivals.sort()
    return Workload(
        families=names,
        arrival_s=[a for a, _ in arrivals],
        family=[f for _, f in arrivals],
        deadline_s=[a + slo_s for a, _ in arrivals],
    )


class _Floored(Accordion):
    """Ours, with each family's InferenceService asking an accuracy floor
    (`spec.accuracy.floor`, as a user sets it; the target stays the API's default, the most
    accurate variant)."""

    def __init__(self, floors: Mapping[str, float], planner: PlannerSettings) -> None:
        super().__init__(planner=planner)
        self.floors = dict(floors)

    def control(self, sim: Simulator) -> Control:
        from accordion.sim.driver import LoopControl

        return LoopControl(sim, planner=self.planner, services=self._service)

    def _service(self, fam: Family, service_time: str, initial_qps: float) -> InferenceService:
        svc = family_service(fam, service_time, initial_qps)
        floor = self.floors.get(fam.name)
        if floor is None:
            return svc
        return svc.model_copy(
            update={
                "spec": svc.spec.model_copy(
                    update={"accuracy": svc.spec.accuracy.model_copy(update={"floor": floor})}
                )
            }
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
    accuracy: float = 0.0
    """Effective accuracy: the mean accuracy of the requests served within the SLO."""
    families: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    """Per family: requests, served within the SLO, their effective accuracy."""


def simulate(
    variant: VariantSpec, demand: float, seconds: float, stages: int, service_time: str, seed: int
) -> Outcome:
    """One service with one variant (`variant`) at `demand` req/s."""
    family = Family(name="resnet", slo_s=SLO_S, variants=(variant,))
    return simulate_families(
        (family,), {"resnet": demand}, seconds, stages, service_time, seed, floors={}
    )


def simulate_families(
    families: tuple[Family, ...],
    demand: Mapping[str, float],
    seconds: float,
    stages: int,
    service_time: str,
    seed: int,
    floors: Mapping[str, float],
) -> Outcome:
    """The families as services on run.py's cluster, each at its Poisson demand; `floors`:
    the services' accuracy floors (`spec.accuracy.floor`); `stages`: the planner's
    `pipeline_max_stages` (1: pipelines off)."""
    cluster = Cluster(
        pools=tuple(PoolSpec(name=n, devices=d) for n, d in CLUSTER.items()), families=families
    )
    planner = PlannerSettings(pipeline_max_stages=stages)
    sim = Simulator(
        cluster,
        poisson_mix({f.name: demand[f.name] for f in families}, seconds, SLO_S, seed=seed),
        _Floored(floors, planner) if floors else Accordion(planner=planner),
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
        f"{r.replicas} x {r.variant} `{r.pipeline}` (batch caps "
        f"{[st.max_batch_size for st in r.stages]})"
        if r.pipeline
        else f"{r.replicas} x {r.variant} whole on {r.pool} (batch cap {r.max_batch_size})"
        for r in (last.rows if last is not None else [])
    ]
    planned = sum(x.served_qps for x in last.services) if last is not None else 0.0
    return Outcome(
        arrivals=len(result.outcome),
        ok=s.ok,
        late=s.late,
        dropped=s.dropped,
        low_busy=busy,
        planned_qps=planned,
        pipeline_rows=rows,
        wall_s=wall,
        accuracy=s.effective_accuracy,
        families=dict(result.families),
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
    parser.add_argument(
        "--family",
        action="store_true",
        help="the resnet family as one service at accuracy floors (and mixed with whole-only "
        "families) instead of one service per variant",
    )
    parser.add_argument("--write", action="store_true", help="into bench/results/pipelines.md")
    args = parser.parse_args()
    path = RESULTS / "pipelines.md"
    previous = path.read_text()
    measured = measured_from(previous)
    cluster = load_proteus_cluster(DATA, devices_per_pool=1)
    if args.family:
        text = family_section(cluster, measured, args.seconds, args.service_time, args.seed)
        print(text)
        if args.write:
            write_section(path, FAMILY_SECTION, text)
        return
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
        write_section(path, SECTION, text)


def write_section(path: Path, section: str, text: str) -> None:
    """Put `text` (a section headed `section`) at the end of the results file, replacing the
    section of an earlier run; the sections before it (run.py's, the data plane's) stay."""
    body = path.read_text()
    if section in body:
        start = body.index(section)
        end = body.find("\n## ", start + len(section))
        body = body[:start] + body[end + 1 :] if end >= 0 else body[:start]
    path.write_text(body.rstrip("\n") + "\n\n" + text)


FAMILY_SECTION = "## In the simulator: the resnet family as one service, at accuracy floors"
MIXED = ("densenet", "efficientnet")
"""Families served beside resnet in the mixed run, whole variants only (no parts measured)."""


def _probe(
    families: tuple[Family, ...], floors: Mapping[str, float], stages: int
) -> dict[str, float]:
    """What the planner (defaults) plans to serve per family when every family's demand is
    more than the cluster can serve."""
    problem = Problem(
        pools=[PoolSpec(name=n, devices=d) for n, d in CLUSTER.items()],
        services=[
            ServiceSpec(
                name=f.name,
                demand_qps=1e5,
                slo_s=f.slo_s,
                accuracy_floor=floors.get(f.name, 0.0),
                variants=list(f.variants),
            )
            for f in families
        ],
        settings=PlannerSettings(pipeline_max_stages=stages),
    )
    return {s.service: s.served_qps for s in plan(problem).services}


def family_section(
    cluster: Cluster, measured: Measured, seconds: float, service_time: str, seed: int
) -> str:
    """The scenario a user runs: one InferenceService over the resnet family (all five
    variants, each with its parts), an accuracy floor as the user sets it, demand above what
    whole placement serves; pipelines off vs on through the same ControlLoop."""
    fams = {f.name: f for f in cluster.families}
    resnet = fams["resnet"]
    resnet = Family(
        name="resnet",
        slo_s=SLO_S,
        variants=tuple(with_stages(v, measured) for v in resnet.variants),
    )
    lines = [
        FAMILY_SECTION,
        "",
        f"`bench/pipelines/sim.py --family`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f", {seconds:.0f} s of Poisson demand per run (seed {seed}), service times "
        f"`SimConfig(service_time='{service_time}')`, the cluster and parts above. One "
        "InferenceService over the resnet family ("
        + ", ".join(f"{v.name} {v.accuracy:.2f}" for v in resnet.variants)
        + "), each variant with its parts scaled as above (the same shares at every depth). "
        "`spec.accuracy.floor` as a user sets it (the target the API's default: the most "
        "accurate variant); the planner chooses variants and pipelines. Demand: 4x what whole "
        "placement plans at that floor (the planner's defaults, pipelines off), except the last "
        "row (see the reading). Accuracy: effective accuracy of the requests served within the "
        "SLO. Pipelines off: `pipeline_max_stages: 1`; on: the default (2).",
        "",
        "| floor | demand req/s | off: within SLO req/s | off: accuracy | on: within SLO req/s "
        "| on: accuracy | gain at the floor | low-class busy (off -> on) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    cases: list[tuple[str, float | None, float]] = []
    for v in sorted(resnet.variants, key=lambda v: v.accuracy):
        floor = None if v is min(resnet.variants, key=lambda v: v.accuracy) else v.accuracy
        whole = _probe((resnet,), {"resnet": floor} if floor is not None else {}, 1)["resnet"]
        label = f"{v.accuracy:.2f} ({v.name})" if floor is not None else "none (API default)"
        cases.append((label, floor, 4 * whole))
    # No floor, demand the pipelines serve in full at resnet101's accuracy: what each side
    # gives up in accuracy to serve it all.
    r101 = next(v for v in resnet.variants if v.name == "resnet101_v1")
    both = _probe((resnet,), {"resnet": r101.accuracy}, 2)["resnet"]
    cases.append(("none, demand pipelines serve at resnet101", None, both))
    for label, floor, demand in cases:
        floors = {"resnet": floor} if floor is not None else {}
        out = [
            simulate_families(
                (resnet,), {"resnet": demand}, seconds, st, service_time, seed, floors
            )
            for st in (1, 2)
        ]
        off, on = out
        w, p = off.ok / seconds, on.ok / seconds
        lines.append(
            f"| {label} | {demand:.0f} | {w:.0f} | {off.accuracy:.2f} | {p:.0f} "
            f"| {on.accuracy:.2f} | {(p / w - 1) * 100:+.0f}% "
            f"| {off.low_busy:.0%} -> {on.low_busy:.0%} |"
        )
        print(lines[-1], flush=True)
        notes.append(
            f"- floor {label}: off: {'; '.join(off.pipeline_rows)}; on: "
            f"{'; '.join(on.pipeline_rows)} (simulated in {off.wall_s:.0f} s / {on.wall_s:.0f} s)"
        )
    lines += ["", "Last plans:", "", *notes, ""]
    # Mixed: resnet (floor resnet101) beside whole-only families sharing the cluster.
    mixed = (resnet, *(fams[n] for n in MIXED))
    floors = {"resnet": r101.accuracy}
    planned = _probe(mixed, floors, 1)
    mix = {name: 2 * qps for name, qps in planned.items()}
    off, on = (
        simulate_families(mixed, mix, seconds, st, service_time, seed, floors) for st in (1, 2)
    )
    lines += [
        f"Mixed: resnet (floor {r101.accuracy:.2f}) with {', '.join(MIXED)} (no floor, whole "
        "variants only: no parts measured), each family at 2x what whole placement plans for "
        "it in the shared cluster; pipelines off -> on:",
        "",
        "| family | demand req/s | off: within SLO req/s | off: accuracy | on: within SLO req/s "
        "| on: accuracy | gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in mix:
        _, ok_off, acc_off = off.families[name]
        _, ok_on, acc_on = on.families[name]
        lines.append(
            f"| {name} | {mix[name]:.0f} | {ok_off / seconds:.0f} | {acc_off:.2f} "
            f"| {ok_on / seconds:.0f} | {acc_on:.2f} | {(ok_on / max(ok_off, 1) - 1) * 100:+.0f}% |"
        )
    lines += [
        f"| all | {sum(mix.values()):.0f} | {off.ok / seconds:.0f} | {off.accuracy:.2f} "
        f"| {on.ok / seconds:.0f} | {on.accuracy:.2f} "
        f"| {(on.ok / max(off.ok, 1) - 1) * 100:+.0f}% |",
        "",
        f"Low-class busy {off.low_busy:.0%} -> {on.low_busy:.0%}; last plan with pipelines on: "
        f"{'; '.join(on.pipeline_rows)} (simulated in {off.wall_s:.0f} s / {on.wall_s:.0f} s).",
        "",
    ]
    return "\n".join(lines)


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
