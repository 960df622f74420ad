"""MIG pools in the simulator (`accordion.sim.mig`): a demand shift makes the planner change a
GPU's layout mid-run, and the simulator carries it out with the operator's node steps.

Checked on every change of the simulated GPUs: no GPU ever has more replicas on a profile than
its layout has slices, and a GPU is relabelled only when no replica holds one of its slices;
the relabel happens, the GPU comes back, and the shifted demand is served afterwards. And the
goal of issue 20 on a small scale: no plan puts replicas on slices out of service (a GPU drained
or being relabelled), and the run loses no more requests beyond the same run with an instant
MIG manager than the drained GPU's share of what arrived while it was out.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from accordion.sim import Accordion, Cluster, Family, SimConfig, Workload
from accordion.sim.engine import Simulator
from accordion.sim.metrics import OK
from accordion.sim.mig import SimMig
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec
from accordion.solver.mig import MigSpec

pytestmark = pytest.mark.timeout(300)

SLO_S, SHIFT_S, END_S = 0.3, 20.0, 150.0


def profile(ms: float) -> list[ProfilePoint]:
    return [ProfilePoint(batch_size=b, p50_s=ms * (1 + 0.1 * b) / 1000) for b in (1, 2, 4, 8)]


def workload(rates: list[tuple[float, float]], seed: int = 3) -> Workload:
    """Two services: (qps before, qps after) the shift."""
    rng = random.Random(seed)
    rows: list[tuple[float, int, float]] = []
    for f, (before, after) in enumerate(rates):
        for start, end, qps in ((0.0, SHIFT_S, before), (SHIFT_S, END_S, after)):
            if qps <= 0:
                continue
            t = start + rng.expovariate(qps)
            while t < end:
                rows.append((t, f, t + SLO_S))
                t += rng.expovariate(qps)
    rows.sort()
    return Workload(
        families=["small", "large"],
        arrival_s=[r[0] for r in rows],
        family=[r[1] for r in rows],
        deadline_s=[r[2] for r in rows],
    )


def cluster() -> Cluster:
    small = VariantSpec(name="tiny", accuracy=70, profiles={"mig/1g.10gb": profile(100)})
    large = VariantSpec(name="huge", accuracy=80, profiles={"mig/7g.80gb": profile(40)})
    fams = (
        Family(name="small", slo_s=SLO_S, variants=(small,)),
        Family(name="large", slo_s=SLO_S, variants=(large,)),
    )
    pool = PoolSpec(
        name="mig",
        devices=3,
        mig=MigSpec(gpu_model="A100-80GB", layouts=[{"1g.10gb": 7}, {"7g.80gb": 1}]),
    )
    return Cluster(pools=(pool,), families=fams)


def test_a_layout_change_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: the large model needs two whole GPUs, the small one a GPU's 1g slices. After:
    # the large one needs one GPU, the small one the slices of two.
    wl = workload([(150.0, 330.0), (180.0, 60.0)])
    violations: list[str] = []
    relabelled_with: list[int] = []
    assign, act = SimMig.assign, SimMig.act

    def checked_assign(self: SimMig) -> None:
        assign(self)
        for gpu in self.gpus:
            for profile_name, n in gpu.layout:
                held = sum(1 for p in gpu.held.values() if p == profile_name)
                if held > n:
                    violations.append(f"{gpu.name}: {held} replicas on {n} {profile_name}")
            for held_profile in set(gpu.held.values()) - set(dict(gpu.layout)):
                violations.append(f"{gpu.name}: a replica on {held_profile}, not in its layout")

    def checked_act(self: SimMig, plan: Any, initial: bool = False) -> None:
        before = {g.name: (g.config, len(g.held)) for g in self.gpus}
        act(self, plan, initial)
        for gpu in self.gpus:
            config, held = before[gpu.name]
            if not initial and config != gpu.config:
                relabelled_with.append(held)

    monkeypatch.setattr(SimMig, "assign", checked_assign)
    monkeypatch.setattr(SimMig, "act", checked_act)
    sim = Simulator(cluster(), wl, Accordion(), SimConfig(seed=1))
    result = sim.run()
    mig: SimMig = getattr(sim.control, "mig")  # noqa: B009

    assert violations == []
    assert mig.relabels >= 1, "the shift should change a layout"
    assert relabelled_with, "no relabel seen"
    assert all(n == 0 for n in relabelled_with), relabelled_with
    assert all(o.end_s is not None for o in mig.outages), "a GPU never came back"
    assert sorted(g.layout for g in mig.gpus) == [(("1g.10gb", 7),)] * 2 + [(("7g.80gb", 1),)]
    last = max(o.end_s or 0.0 for o in mig.outages)
    # Served once the new replicas have loaded on the new slices.
    loaded = last + SimConfig().model_load_s + 5.0
    after = [i for i, t in enumerate(wl.arrival_s) if t > loaded]
    assert len(after) > 1000
    served = sum(1 for i in after if result.outcome.get(i) == OK) / len(after)
    assert served > 0.98, f"{served:.1%} served within SLO after the reconfiguration"


def _run(reconfigure_s: float, planned_off: list[str]) -> tuple[set[int], SimMig]:
    """The shift run with a MIG manager taking `reconfigure_s`: the requests lost, and the
    MIG pool. Every plan is checked against the slices in service when it is acted on."""
    wl = workload([(150.0, 330.0), (180.0, 60.0)])
    act = SimMig.act

    def checked_act(self: SimMig, plan: Any, initial: bool = False) -> None:
        if plan is not None and not initial:
            in_service: Counter[str] = Counter()
            for gpu in self.gpus:
                if gpu.schedulable:
                    in_service.update({f"{gpu.pool}/{p}": n for p, n in gpu.layout})
            rows: Counter[str] = Counter()
            for row in plan.rows:
                rows[row.pool] += row.replicas  # spare replicas included
            planned_off.extend(
                f"t={self.sim.now_s:.1f}: {n} replicas planned on {pool}, {in_service[pool]} "
                "slices in service"
                for pool, n in rows.items()
                if n > in_service[pool]
            )
        act(self, plan, initial)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SimMig, "act", checked_act)
        sim = Simulator(cluster(), wl, Accordion(), SimConfig(seed=1))
        mig: SimMig = getattr(sim.control, "mig")  # noqa: B009
        mig.reconfigure_s = reconfigure_s
        result = sim.run()
    lost = {i for i in range(len(wl.arrival_s)) if result.outcome.get(i) != OK}
    return lost, mig


def test_reconfiguration_loses_no_more_than_the_drained_gpus_share() -> None:
    planned_off: list[str] = []
    slow_lost, slow = _run(60.0, planned_off)
    instant_lost, _ = _run(0.0, [])
    assert slow.relabels >= 1
    # Replicas are planned only on slices that exist: a drained or relabelled GPU's work is
    # placed elsewhere (make before break), not routed to replicas that cannot start.
    assert planned_off == [], planned_off
    arrivals = workload([(150.0, 330.0), (180.0, 60.0)]).arrival_s
    during = {
        i
        for o in slow.outages
        for i, t in enumerate(arrivals)
        if o.start_s <= t < (o.end_s if o.end_s is not None else END_S)
    }
    share = len(during) / len(slow.gpus)
    extra = len(slow_lost) - len(instant_lost)
    assert extra <= share, f"{extra} lost beyond the instant MIG manager, share {share:.0f}"
