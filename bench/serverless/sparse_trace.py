"""Device-seconds at equal SLO attainment on a sparse, diurnal, bursty trace (issue 17).

Three services on one GPU pool, 20 simulated minutes, cold starts included (a new replica
loads for `SimConfig.model_load_s`, 2 s, before it serves; requests meanwhile are late or
dropped in every policy):

* ``vision``: a diurnal curve (0 -> 120 -> 0 req/s over 13 minutes, then idle), its rate
  modulated in 0.5-2 s phases (lognormal, cv2 0.3: bursty);
* ``speech``: sessions of 60 s at 30 req/s every 5 minutes, idle in between;
* ``text``: 6 req/s with 2 s bursts of 60 req/s about every 45 s, idle from minute 10 to 15.

Policies, each on the simulator's engine with execution times drawn from the profiles
(`SimConfig.service_time = "dist"`):

* ``ours``: the product: the operator's ControlLoop (`accordion.sim.driver.LoopControl`) at
  its defaults, the routers' burstiness measured and the planner's batching model
  (`accordion.solver.queueing`) sizing replicas, every service ``minReplicas: 0`` with
  ``scaleToZeroIdleSeconds: 90`` (Knative's stable window plus grace period: neither keeps an
  idle replica longer; within it the product's idle period follows the measured cold start
  and rate, `accordion.operator.control.idle`) and ``demand.burst.policy: Off`` (no spare
  replicas: the API's setting for cost-sensitive services); requests at zero replicas are held
  by the router's activator (`accordion.sim.activator`), as the KPA's activator holds its own;
* ``margin``: the same loop and spec without the batching model: the fixed utilization
  margin (PlannerSettings.utilization), swept, with every serverless rule ours has (the same
  scale to zero, idle period, activator): only the capacity model differs;
* ``pre17``: "today's fixed-margin planning" of issue 17's goal, the product as it planned
  before issue 17 (`pre_serverless`: no replica floor, so zero workers for a service whose
  estimate is zero; no idle period; no activator, so a request with no ready replica is shed;
  the estimator of then), utilization margin swept;
* ``knative``: the KPA (`accordion.sim.knative`), target utilization swept.

Equal SLO attainment: every policy's own knob is swept, each one a setting its user has:
ours' ``spec.demand.headroom`` (0.1 by default; 0, 0.25, 0.5) and ``minReplicas: 1`` (the
API's default, no scale to zero) for some services (``ours-min1-speech``: speech's;
``ours-min1``: every service's), the attainment warm replicas buy; the
margin's and pre17's utilization (0.5-1.0), the KPA's target utilization (0.3-1.0). Each
policy's sweep gives its cheapest device-seconds for each attainment (the Pareto frontier of
its points, interpolated linearly between them); report.py compares the policies at the same
attainment wherever both reach it, and at ours' default point. Run:
``.venv/bin/python bench/serverless/sparse_trace.py`` (writes
bench/results/serverless_trace.json, read by report.py); ``--only pre17`` runs one policy's
sweep and replaces only its rows in that file (the others' rows stay as they were).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.operator.api import InferenceService, parse_resource
from accordion.sim.driver import LoopControl, family_service
from accordion.sim.engine import Control, SimConfig, Simulator
from accordion.sim.knative import Knative
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PlannerSettings, PoolSpec, ProfilePoint, VariantSpec
from bench.serverless.pre_serverless import PreServerless

RESULTS = Path(__file__).resolve().parents[1] / "results"
DURATION_S = 1200.0
IDLE_S = 90.0


def variant(name: str, accuracy: float, base_ms: float, per_item_ms: float) -> VariantSpec:
    points = [
        ProfilePoint(
            batch_size=b,
            p50_s=(base_ms + per_item_ms * b) / 1000.0,
            p90_s=1.15 * (base_ms + per_item_ms * b) / 1000.0,
        )
        for b in (1, 2, 4, 8, 16)
    ]
    return VariantSpec(name=name, accuracy=accuracy, profiles={"gpu": points})


def cluster() -> Cluster:
    families = (
        Family(
            "vision",
            0.15,
            (variant("vit-large", 85.0, 8.0, 3.0), variant("vit-base", 80.0, 4.0, 1.2)),
        ),
        Family("speech", 0.3, (variant("whisper-m", 82.0, 15.0, 5.0),)),
        Family("text", 0.1, (variant("bert-large", 88.0, 5.0, 1.5),)),
    )
    return Cluster(pools=(PoolSpec(name="gpu", devices=24),), families=families)


def _arrivals(rate_at: Any, peak: float, end_s: float, rng: random.Random) -> list[float]:
    """A Poisson process of rate `rate_at(t)` (<= `peak`), by thinning."""
    t, out = 0.0, list[float]()
    while True:
        t += rng.expovariate(peak)
        if t >= end_s:
            return out
        if rng.random() * peak <= rate_at(t):
            out.append(t)


def workload(seed: int = 7) -> Workload:
    rng = random.Random(seed)
    # vision: diurnal, modulated in phases of 0.5-2 s (lognormal, cv2 0.3).
    sigma = math.sqrt(math.log1p(0.3))
    phases: list[tuple[float, float]] = []
    t = 0.0
    while t < DURATION_S:
        phases.append((t, math.exp(sigma * rng.gauss(0, 1) - sigma * sigma / 2)))
        t += rng.uniform(0.5, 2.0)

    def factor(x: float) -> float:
        lo, hi = 0, len(phases) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if phases[mid][0] <= x:
                lo = mid
            else:
                hi = mid - 1
        return phases[lo][1]

    def vision(x: float) -> float:
        day = 780.0
        return 120.0 * math.sin(math.pi * x / day) * factor(x) if x < day else 0.0

    def speech(x: float) -> float:
        return 30.0 if x % 300.0 < 60.0 else 0.0

    def text(x: float) -> float:
        if 600.0 <= x < 900.0:
            return 0.0
        return 60.0 if x % 45.0 < 2.0 else 6.0

    rows: list[tuple[float, int, float]] = []
    fams = cluster().families
    for f, (rate_at, peak) in enumerate(((vision, 120.0 * 4), (speech, 30.0), (text, 60.0))):
        for a in _arrivals(rate_at, peak, DURATION_S, rng):
            rows.append((a, f, a + fams[f].slo_s))
    rows.sort()
    return Workload(
        families=[f.name for f in fams],
        arrival_s=[r[0] for r in rows],
        family=[r[1] for r in rows],
        deadline_s=[r[2] for r in rows],
    )


def scale_to_zero_service(
    fam: Family,
    service_time: str,
    initial_qps: float,
    headroom: float | None = None,
    min_replicas: int = 0,
) -> InferenceService:
    """The family as a user would apply it with scale to zero (minReplicas 0); `headroom`:
    its `spec.demand.headroom` (None: the API's default, 0.1); `min_replicas` 1: the API's
    default instead, no scale to zero."""
    base = family_service(fam, service_time, initial_qps)
    obj = base.model_dump(by_alias=True, exclude_none=True, mode="json")
    obj["spec"]["minReplicas"] = min_replicas
    if min_replicas == 0:
        obj["spec"]["scaleToZeroIdleSeconds"] = IDLE_S
    # A cost-sensitive service: no spare replicas on idle devices (the API's documented
    # choice for such services); the batching model sizes the replicas for its bursts.
    obj["spec"].setdefault("demand", {})["burst"] = {"policy": "Off"}
    if headroom is not None:
        obj["spec"]["demand"]["headroom"] = headroom
    svc = parse_resource(obj, f"family {fam.name}")
    assert isinstance(svc, InferenceService)
    return svc


class Serverless(Accordion):
    """The product with scale to zero; `batching_model` False: today's fixed margin."""

    def __init__(
        self,
        *,
        batching_model: bool,
        utilization: float | None,
        name: str,
        headroom: float | None = None,
        warm: frozenset[str] = frozenset(),
    ) -> None:
        planner = None if utilization is None else PlannerSettings(utilization=utilization)
        super().__init__(planner=planner, name=name)
        self.batching_model = batching_model
        self.headroom = headroom
        self.warm = warm
        """The families applied with the API's default minReplicas 1 (no scale to zero)."""

    def service(self, fam: Family, service_time: str, initial_qps: float) -> InferenceService:
        return scale_to_zero_service(
            fam, service_time, initial_qps, self.headroom, 1 if fam.name in self.warm else 0
        )

    def control(self, sim: Simulator) -> Control:
        return LoopControl(
            sim,
            timings=self.timings,
            planner=self.planner,
            services=self.service,
            batching_model=self.batching_model,
        )


def run(policy: Any, seed: int = 7) -> dict[str, Any]:
    """One policy on the trace; `seed`: the workload's (7 is the tables'; others held out)."""
    started = time.perf_counter()
    sim = Simulator(cluster(), workload(seed), policy, SimConfig(service_time="dist", seed=1))
    result = sim.run()
    s = result.summary
    return {
        "policy": policy.name,
        "attainment": s.ok / max(1, s.demand),
        "device_seconds": s.device_seconds,
        "accuracy": s.effective_accuracy,
        "late": s.late,
        "dropped": s.dropped,
        "demand": s.demand,
        "replans": s.replans,
        "wall_s": time.perf_counter() - started,
    }


def sweeps(args: argparse.Namespace) -> dict[str, list[Any]]:
    """Each policy's swept points, by policy name."""

    def values(text: str) -> list[float]:
        return [float(x) for x in text.split(",") if x]

    everyone = frozenset(f.name for f in cluster().families)

    return {
        "ours": [Serverless(batching_model=True, utilization=None, name="ours")]
        + [
            Serverless(batching_model=True, utilization=None, name=f"ours-h{h:g}", headroom=h)
            for h in values(args.headrooms)
        ]
        # The API's default minReplicas 1 (no scale to zero) for some services: ours' setting
        # for the attainment that keeping their replicas warm buys.
        + [
            Serverless(
                batching_model=True,
                utilization=None,
                name="ours-min1" + "".join(f"-{f}" for f in sorted(warm) if warm != everyone),
                warm=warm,
            )
            for warm in (frozenset(x.split("+")) for x in args.min1.split(",") if x)
        ],
        "margin": [
            Serverless(batching_model=False, utilization=u, name=f"margin-{u:g}")
            for u in values(args.margins)
        ],
        "pre17": [PreServerless(utilization=u, name=f"pre17-{u:g}") for u in values(args.pre17)],
        "knative": [
            Knative(target_utilization=tu, name=f"knative-{tu:g}") for tu in values(args.targets)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--headrooms", default="0,0.25,0.5")
    parser.add_argument(
        "--min1",
        default="speech,text,speech+text,speech+text+vision",
        help="comma-separated sets (a+b) of families with minReplicas 1, one ours point each",
    )
    parser.add_argument("--margins", default="0.5,0.6,0.7,0.8,0.9,1.0")
    parser.add_argument("--pre17", default="0.5,0.6,0.7,0.8,0.9,1.0")
    parser.add_argument("--targets", default="0.3,0.4,0.5,0.7,0.85,1.0")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated policies to run (ours, margin, pre17, "
        "knative); their rows replace theirs in --out, the others' stay",
    )
    parser.add_argument("--seed", type=int, default=7, help="the workload's (held out: not 7)")
    parser.add_argument("--out", type=Path, default=RESULTS / "serverless_trace.json")
    args = parser.parse_args()
    chosen = {x for x in args.only.split(",") if x}
    rows: list[dict[str, Any]] = []
    for name, policies in sweeps(args).items():
        for policy in policies:
            if chosen and name not in chosen and policy.name not in chosen:
                continue
            rows.append({**run(policy, args.seed), "group": name})
            print(rows[-1], flush=True)
    if chosen and args.out.exists():
        ran = {r["policy"] for r in rows}
        old = json.loads(args.out.read_text())["rows"]
        kept = [r for r in old if group(r) not in chosen and r["policy"] not in ran]
        rows = kept + rows
    order = list(sweeps(args))
    rows.sort(key=lambda r: order.index(group(r)))
    out = {"duration_s": DURATION_S, "seed": args.seed, "rows": rows}
    args.out.write_text(json.dumps(out, indent=1) + "\n")


def group(row: dict[str, Any]) -> str:
    """The policy a row belongs to (rows written before the field: its name's prefix)."""
    return str(row.get("group") or row["policy"].split("-")[0])


if __name__ == "__main__":
    main()
