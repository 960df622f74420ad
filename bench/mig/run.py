"""MIG layouts chosen jointly with variants (issue 20) against whole-GPU pools, in one run.

1. Families: Proteus's measured ``gpu-ampere`` profiles (from its artifact, read from
   ``<repo>/../shared/data/proteus``) taken as the full GPU (7g.80gb of an A100-80GB), with a
   mix of small models (BERT-tiny..medium, ALBERT/RoBERTa-base, YOLOv5n/s) and large ones
   (ResNet-152, DenseNet-161, ResNeSt-269, YOLOv5x). Each service has ONE variant (equal
   accuracy by construction), SLO 300 ms (Proteus's).
2. Slice profiles, ASSUMPTION until a GPU run measures them: a slice of c compute slices runs a
   batch in the full GPU's time times 7 / c, never faster than the full GPU at batch 1
   (``slice_profile``). The rule is pessimistic for these profiles, which are nearly flat in
   batch size (the full GPU is underused at small batches, so a slice loses less than 7/c).
3. Demand: a small service asks for SMALL_SHARE of what one whole GPU serves of it within SLO,
   a large one LARGE_SHARE of it (the planner's own capacity rule, `capacity.batch_capacity`).
4. Plans with the product's planner at its defaults (`accordion.solver.plan`,
   `PlannerSettings()`): a pool of whole GPUs, against the same GPUs as a MIG pool (any valid
   layout, `accordion.solver.mig`), and reports
   - equal demand: the fewest GPUs that serve all of it (the goal: >= 30% fewer with MIG);
   - equal hardware: on 60% of the GPUs whole pools need, the demand served within SLO
     (the goal: >= 1.5x with MIG).
5. Checks the equal-hardware plans in the simulator (`accordion.sim`, the Accordion policy with
   its defaults: the operator's control loop on simulated time, the real batchers): Poisson
   arrivals for SIM_SECONDS; the MIG run's pools are the slice sub-pools of the layouts its plan
   chose (a slice sub-pool is a pool with its own profile; the layouts stay fixed in the run).
   Served within SLO = answered by its deadline.
6. Reconfiguration under load (`reconfiguration`): RECONF_GPUS GPUs as one MIG pool, the base
   demand, and at SHIFT_S a shift (small models x SMALL_SHIFT, large ones x LARGE_SHIFT) that
   makes the planner change layouts mid-run. The simulator runs the operator's node steps
   (`accordion.sim.mig`: one GPU at a time drained, more when their workers have free slices
   elsewhere, its workers evicted, relabelled, the MIG manager busy RECONFIGURE_S (ASSUMED),
   released). The same run with a MIG manager that takes no time is the reference: what the
   reconfiguration costs is the requests lost beyond it, against the drained GPU's share (the
   requests that arrived while any GPU was out over the GPUs in use: one GPU's share, not
   doubled when two are out at once).

    flock /tmp/accordion-heavy.lock .venv/bin/python bench/mig/run.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from accordion.sim import Accordion, Cluster, Family, SimConfig, Workload, simulate
from accordion.sim.engine import Simulator
from accordion.sim.metrics import OK
from accordion.sim.mig import RECONFIGURE_S
from accordion.sim.workload import load_proteus_cluster
from accordion.solver import (
    Plan,
    PlannerSettings,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
    plan,
)
from accordion.solver.capacity import batch_capacity
from accordion.solver.mig import GPU_MODELS, MigSpec, layout_name, slice_pool
from accordion.solver.migplan import LAYOUT_HYSTERESIS, expand

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "proteus"
OUT = ROOT / "bench" / "results" / "mig.md"
GPU_MODEL = "A100-80GB"
SLO_S = 0.3
SMALL = [
    ("bert", "prajjwal1/bert-tiny"),
    ("bert", "prajjwal1/bert-mini"),
    ("bert", "prajjwal1/bert-small"),
    ("bert", "prajjwal1/bert-medium"),
    ("bert", "roberta-base"),
    ("bert", "albert-base-v2"),
    ("yolo", "yolov5n"),
    ("yolo", "yolov5s"),
]
LARGE = [
    ("resnet", "resnet152_v1"),
    ("densenet", "densenet161"),
    ("resnest", "resnest269"),
    ("yolo", "yolov5x"),
]
SMALL_SHARE = 0.15
LARGE_SHARE = 1.6
SIM_SECONDS = 40.0
RECONF_GPUS = 12
RECONF_SECONDS = 240.0
SHIFT_S = 60.0
SMALL_SHIFT = 4.0
LARGE_SHIFT = 0.25


def slice_profile(full: list[ProfilePoint], compute_slices: int) -> list[ProfilePoint]:
    """The assumed profile on a slice of `compute_slices` of 7 (module docstring, 2)."""
    floor = full[0]
    return [
        ProfilePoint(
            batch_size=p.batch_size,
            p50_s=max(floor.p50_s, p.p50_s * 7 / compute_slices),
            p90_s=max(floor.latency_s("p90"), p.latency_s("p90") * 7 / compute_slices),
        )
        for p in full
    ]


def services(scale: float) -> list[ServiceSpec]:
    """The mix, at `scale` times the base demand; profiles for whole GPUs and every slice."""
    cluster = load_proteus_cluster(DATA)
    fams = {f.name: f for f in cluster.families}
    settings = PlannerSettings()
    out = []
    for kind, share, picks in (("small", SMALL_SHARE, SMALL), ("large", LARGE_SHARE, LARGE)):
        for fam, model in picks:
            full = fams[fam].variant(model).profiles["gpu-ampere"]
            fit = batch_capacity(full, SLO_S, settings.latency_percentile, settings.utilization)
            assert fit is not None, model
            profiles = {"whole": full} | {
                slice_pool("mig", name): slice_profile(full, p.compute_slices)
                for name, p in GPU_MODELS[GPU_MODEL].items()
            }
            out.append(
                ServiceSpec(
                    name=f"{kind}-{model.rpartition('/')[2]}",
                    demand_qps=round(share * fit[1] * scale, 3),
                    slo_s=SLO_S,
                    variants=[
                        VariantSpec(
                            name=model.rpartition("/")[2],
                            accuracy=fams[fam].variant(model).accuracy,
                            profiles=profiles,
                        )
                    ],
                )
            )
    return out


def problem(gpus: int, mig: bool, scale: float = 1.0) -> Problem:
    svcs = services(scale)
    if mig:
        pool = PoolSpec(name="mig", devices=gpus, mig=MigSpec(gpu_model=GPU_MODEL))
        svcs = [_only(s, "mig/") for s in svcs]
    else:
        pool = PoolSpec(name="whole", devices=gpus)
        svcs = [_only(s, "whole") for s in svcs]
    return Problem(pools=[pool], services=svcs, settings=PlannerSettings())


def _only(svc: ServiceSpec, prefix: str) -> ServiceSpec:
    variants = [
        v.model_copy(
            update={"profiles": {k: p for k, p in v.profiles.items() if k.startswith(prefix)}}
        )
        for v in svc.variants
    ]
    return svc.model_copy(update={"variants": variants})


def served_fraction(result: Plan) -> float:
    demand = sum(s.demand_qps for s in result.services)
    return sum(s.served_qps for s in result.services) / demand


def fewest_gpus(mig: bool, limit: int = 64) -> tuple[int, Plan]:
    """The fewest GPUs whose plan serves all the base demand (bisection: more never serve less)."""
    lo, hi = 0, limit
    best = plan(problem(limit, mig))
    if served_fraction(best) < 1 - 1e-6:
        raise RuntimeError(f"{limit} GPUs do not serve the demand (mig={mig})")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        result = plan(problem(mid, mig))
        if served_fraction(result) >= 1 - 1e-6:
            hi, best = mid, result
        else:
            lo = mid
    return hi, best


def poisson_workload(svcs: list[ServiceSpec], seconds: float, seed: int) -> Workload:
    return shifted_workload(svcs, seconds, seconds, {}, seed)


def simulated(prob: Problem, result: Plan, seconds: float) -> tuple[float, int]:
    """Fraction served within SLO in the simulator, and requests; MIG pools at their layouts."""
    if any(p.mig is not None for p in prob.pools):
        layouts = Counter(g.layout for g in result.layouts)
        group = prob.pools[0]
        assert group.mig is not None
        allowed = group.mig.allowed()
        counts = [[layouts.get(layout_name(lay), 0) for lay in allowed]]
        pools = tuple(p for p in expand(prob, counts).pools if p.devices > 0)
    else:
        pools = tuple(prob.pools)
    # The simulator's world holds DevicePool objects, whose names are DNS labels.
    label = {p.name: p.name.replace("/", "-").replace(".", "-") for p in pools}
    pools = tuple(p.model_copy(update={"name": label[p.name]}) for p in pools)
    fams = tuple(
        Family(
            name=s.name,
            slo_s=s.slo_s,
            variants=tuple(
                v.model_copy(
                    update={"profiles": {label[k]: p for k, p in v.profiles.items() if k in label}}
                )
                for v in s.variants
            ),
        )
        for s in prob.services
    )
    workload = poisson_workload(list(prob.services), seconds, seed=1)
    run = simulate(Cluster(pools=pools, families=fams), workload, Accordion(), SimConfig(seed=1))
    s = run.summary
    return s.ok / max(1, s.demand), s.demand


def shifted_workload(
    svcs: list[ServiceSpec], seconds: float, shift_s: float, factor: dict[str, float], seed: int
) -> Workload:
    """Poisson arrivals at each service's demand, times `factor` from `shift_s` on."""
    rng = random.Random(seed)
    rows: list[tuple[float, int, float]] = []
    for f, svc in enumerate(svcs):
        for start, end, qps in (
            (0.0, shift_s, svc.demand_qps),
            (shift_s, seconds, svc.demand_qps * factor.get(svc.name, 1.0)),
        ):
            if start >= end:
                continue
            t = start + rng.expovariate(qps)
            while t < end:
                rows.append((t, f, t + svc.slo_s))
                t += rng.expovariate(qps)
    rows.sort()
    return Workload(
        families=[s.name for s in svcs],
        arrival_s=[r[0] for r in rows],
        family=[r[1] for r in rows],
        deadline_s=[r[2] for r in rows],
    )


@dataclass
class Reconfigured:
    """One run of the reconfiguration scenario."""

    demand: int
    lost: int
    relabels: int
    outages: list[tuple[str, float, float]]
    """(GPU, drained at, released at) in simulated seconds."""
    in_outages: int
    """Requests that arrived while some GPU was out."""
    lost_in_outages: int
    share: float
    """The drained GPU's share: requests that arrived while any GPU was out / GPUs in use."""


def reconfiguration(seconds: float, reconfigure_s: float) -> Reconfigured:
    """The shift scenario (module docstring, 6) with a MIG manager taking `reconfigure_s`."""
    svcs = [_only(s, "mig/") for s in services(1.0)]
    factor = {s.name: SMALL_SHIFT if s.name.startswith("small") else LARGE_SHIFT for s in svcs}
    shift = min(SHIFT_S, seconds / 4)
    workload = shifted_workload(svcs, seconds, shift, factor, seed=2)
    fams = tuple(Family(name=s.name, slo_s=s.slo_s, variants=tuple(s.variants)) for s in svcs)
    pool = PoolSpec(name="mig", devices=RECONF_GPUS, mig=MigSpec(gpu_model=GPU_MODEL))
    sim = Simulator(Cluster(pools=(pool,), families=fams), workload, Accordion(), SimConfig(seed=1))
    mig = getattr(sim.control, "mig")  # noqa: B009 (the Accordion control's MIG pools)
    mig.reconfigure_s = reconfigure_s
    result = sim.run()
    end = workload.duration_s
    outages = [(o.gpu, o.start_s, o.end_s if o.end_s is not None else end) for o in mig.outages]
    in_use = max(1, sum(1 for g in mig.gpus if g.layout))
    arrivals = workload.arrival_s
    hit: set[int] = set()
    for _, a, b in outages:
        hit.update(i for i, t in enumerate(arrivals) if a <= t < b)
    # One GPU's share of what arrived while any GPU was out: two GPUs out at once do not
    # double it (the goal reads per drained GPU).
    share = len(hit) / in_use
    lost = [i for i in range(len(arrivals)) if result.outcome.get(i) != OK]
    return Reconfigured(
        demand=len(arrivals),
        lost=len(lost),
        relabels=mig.relabels,
        outages=outages,
        in_outages=len(hit),
        lost_in_outages=sum(1 for i in lost if i in hit),
        share=share,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short simulation")
    args = parser.parse_args(argv)
    seconds = 10.0 if args.quick else SIM_SECONDS
    started = time.perf_counter()
    lines = [
        "# MIG layouts chosen with the variants vs whole-GPU pools (issue 20)",
        "",
        "`flock /tmp/accordion-heavy.lock .venv/bin/python bench/mig/run.py` "
        "(bench/mig/run.py says how). No GPU was lent to this run: the slice profiles are an "
        "ASSUMPTION derived from full-GPU profiles (a slice of c compute slices runs a batch in "
        "the full GPU's time x 7/c, never below the full GPU's batch-1 latency), not measured.",
        "",
        f"{len(SMALL)} small and {len(LARGE)} large models (Proteus's gpu-ampere profiles as the "
        f"full {GPU_MODEL}), one variant each (equal accuracy), SLO {SLO_S * 1000:.0f} ms; a "
        f"small service asks {SMALL_SHARE:.0%} of one whole GPU's capacity for it, a large one "
        f"{LARGE_SHARE:.0%}. Planner: `accordion.solver.plan` at `PlannerSettings()` defaults.",
        "",
    ]
    whole_n, _ = fewest_gpus(mig=False)
    mig_n, mig_plan = fewest_gpus(mig=True)
    saved = 1 - mig_n / whole_n
    lines += [
        "## Equal demand: the fewest GPUs that serve all of it",
        "",
        "| pools | GPUs | layouts chosen |",
        "|---|---:|---|",
        f"| whole GPUs | {whole_n} | - |",
        f"| MIG, any layout | {mig_n} | "
        + ", ".join(
            f"{n}x {k}" for k, n in sorted(Counter(g.layout for g in mig_plan.layouts).items())
        )
        + " |",
        "",
        f"MIG needs **{saved:.0%} fewer GPUs** (goal >= 30%: "
        f"{'met' if saved >= 0.3 else 'MISSED'}).",
        "",
    ]
    gpus = max(1, round(whole_n * 0.6))
    whole_eq = plan(problem(gpus, mig=False))
    mig_eq = plan(problem(gpus, mig=True))
    whole_served = sum(s.served_qps for s in whole_eq.services)
    mig_served = sum(s.served_qps for s in mig_eq.services)
    ratio = mig_served / whole_served
    sim_whole, n_whole = simulated(problem(gpus, False), whole_eq, seconds)
    sim_mig, n_mig = simulated(problem(gpus, True), mig_eq, seconds)
    demand = sum(s.demand_qps for s in whole_eq.services)
    lines += [
        f"## Equal hardware: {gpus} GPUs (60% of what whole pools need), the base demand",
        "",
        "| pools | demand served within SLO (plan) | services left with nothing | layouts chosen |",
        "|---|---:|---:|---|",
        f"| whole GPUs | {whole_served:,.0f} of {demand:,.0f} req/s "
        f"({whole_served / demand:.1%}) | "
        f"{sum(1 for s in whole_eq.services if s.served_qps <= 0)} | - |",
        f"| MIG, any layout | {mig_served:,.0f} req/s ({mig_served / demand:.1%}) | "
        f"{sum(1 for s in mig_eq.services if s.served_qps <= 0)} | "
        + ", ".join(
            f"{n}x {k}" for k, n in sorted(Counter(g.layout for g in mig_eq.layouts).items())
        )
        + " |",
        "",
        f"MIG serves **{ratio:.2f}x the demand** within SLO at equal accuracy (goal >= 1.5x: "
        f"{'met' if ratio >= 1.5 else 'MISSED'}).",
        "",
        f"Simulated on {gpus} GPUs, {seconds:.0f} s of Poisson arrivals at the base demand, the "
        "Accordion policy (control loop, batchers) with its defaults:",
        "",
        "| pools | requests | served within SLO |",
        "|---|---:|---:|",
        f"| whole GPUs | {n_whole:,} | {sim_whole:.1%} |",
        f"| MIG (the plan's layouts, fixed) | {n_mig:,} | {sim_mig:.1%} |",
        "",
    ]
    lines += reconfiguration_lines(80.0 if args.quick else RECONF_SECONDS)
    lines += [f"Run took {time.perf_counter() - started:.0f} s."]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def reconfiguration_lines(reconf_seconds: float) -> list[str]:
    """The report's section on reconfiguration under load (module docstring, 6)."""
    slow = reconfiguration(reconf_seconds, RECONFIGURE_S)
    instant = reconfiguration(reconf_seconds, 0.0)
    extra = slow.lost - instant.lost
    # A reference that loses more than the run measures its own trouble, not the relabels'.
    verdict = (
        "not read: the reference lost more than this run"
        if extra < 0
        else ("met" if extra <= slow.share else "MISSED")
    )
    lines = [
        f"## Reconfiguration under load: {RECONF_GPUS} GPUs, demand shifts at "
        f"{min(SHIFT_S, reconf_seconds / 4):.0f} s",
        "",
        f"{reconf_seconds:.0f} s simulated, Poisson arrivals at the base demand, then small models "
        f"x{SMALL_SHIFT:g} and large ones x{LARGE_SHIFT:g}: the planner changes layouts mid-run, "
        "and the simulator carries them out with the operator's node steps "
        "(`accordion.operator.mig` via `accordion.sim.mig`: one GPU of the pool at a time is "
        "tainted, its workers evicted and made again on free slices elsewhere, relabelled, "
        "released when the MIG manager says success; another GPU joins it only when every worker "
        "on it has a free slice of its profile on a GPU in service that keeps its config; "
        "replicas are planned only on slices in service, `MigSpec.in_service`: a GPU drained "
        "or being relabelled takes none, so its work is placed on slices elsewhere; layouts "
        "have hysteresis, `migplan.LAYOUT_HYSTERESIS` "
        f"= {LAYOUT_HYSTERESIS:.0%}: a GPU keeps its target in the plan in force, "
        "`MigSpec.target`, unless free layouts serve more by that share of the demand). "
        f"The MIG manager takes {RECONFIGURE_S:.0f} s "
        "per relabel: ASSUMED, not measured (no GPU lent). Reference: the same run with a MIG "
        "manager that takes no time.",
        "",
        "| MIG manager | requests | lost (late or dropped) | relabels | GPU outages (drain -> "
        "release) | requests during outages | lost among them |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for label, r in ((f"{RECONFIGURE_S:.0f} s", slow), ("instant (reference)", instant)):
        spans = ", ".join(f"{g.rsplit('-', 1)[-1]} {a:.0f}-{b:.0f} s" for g, a, b in r.outages)
        lines.append(
            f"| {label} | {r.demand:,} | {r.lost:,} ({r.lost / r.demand:.2%}) | {r.relabels} | "
            f"{spans or '-'} | {r.in_outages:,} | {r.lost_in_outages:,} |"
        )
    lines += [
        "",
        f"Reconfiguration cost **{extra:,} requests** beyond the reference; the drained GPU's "
        f"share (requests that arrived while any GPU was out / {RECONF_GPUS} GPUs in use: one "
        "GPU's share, not doubled when two are out at once) is "
        f"**{slow.share:,.0f}** (goal: no request lost beyond it: {verdict}).",
        "",
        "Not measured here: real slice latencies and a real MIG manager's time (no GPU lent).",
        "",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
