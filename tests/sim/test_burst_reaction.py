"""Bursts are met at once: the spare replicas take the first seconds, and the loop re-plans
within a measurement and the minimum pass interval of the onset, not at its periodic pass.

One family on one pool in the simulator, the product's loop (`LoopControl`) at its default
timings: a step from 40 to 400 req/s at t = 30 s, on simulated time.
"""

from __future__ import annotations

from typing import Any

import pytest

from accordion.operator.control.timing import DEFAULT_TIMINGS
from accordion.sim.engine import SimConfig, Simulator
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec

ONSET_S = 30.0


def cluster() -> Cluster:
    def variant(name: str, accuracy: float, latency_s: float) -> VariantSpec:
        points = [
            ProfilePoint(batch_size=b, p50_s=latency_s * (1 + 0.25 * (b - 1))) for b in (1, 2, 4)
        ]
        return VariantSpec(name=name, accuracy=accuracy, profiles={"gpu": points})

    family = Family(
        name="f",
        slo_s=0.2,
        variants=(variant("big", 90.0, 0.02), variant("small", 80.0, 0.005)),
    )
    return Cluster(pools=(PoolSpec(name="gpu", devices=12),), families=(family,))


def step_workload() -> Workload:
    arrivals: list[float] = []
    t = 0.0
    while t < 60.0:
        arrivals.append(t)
        t += 1 / 40.0 if t < ONSET_S else 1 / 400.0
    return Workload(
        families=["f"],
        arrival_s=arrivals,
        family=[0] * len(arrivals),
        deadline_s=[a + 0.2 for a in arrivals],
    )


def reaction(burst_buffer: bool) -> tuple[float, float, float]:
    """(onset to the re-plan, onset to planned capacity ready, violations in the 10 s after)."""
    sim = Simulator(cluster(), step_workload(), Accordion(burst_buffer=burst_buffer), SimConfig())
    result = sim.run()
    replans = [
        float(n.split()[0])
        for n in result.notes
        if "ReplicasChanged" in n and float(n.split()[0]) >= ONSET_S
    ]
    ready = [
        sec
        for sec, sample, _ in result.timeline["f"]
        if sec >= ONSET_S and sample.planned_qps + sample.spare_qps >= 400.0
    ]
    after = [s for s in result.seconds if ONSET_S <= s.second < ONSET_S + 10]
    violations = sum(s.late + s.dropped for s in after) / sum(s.demand for s in after)
    return replans[0] - ONSET_S, ready[0] + 1 - ONSET_S, violations


def test_a_burst_is_replanned_within_a_measurement_and_served_after_one_model_load() -> None:
    replan_s, ready_s, _ = reaction(burst_buffer=True)
    timings = DEFAULT_TIMINGS
    # Seen by the next measurement, planned at most one minimum pass interval later.
    assert replan_s <= timings.demand_interval_s + timings.min_pass_interval_s
    # The new replicas load for 2 s (SimConfig.model_load_s) after the re-plan.
    assert ready_s <= replan_s + SimConfig().model_load_s + 1.0


def test_spare_replicas_take_the_burst_meanwhile() -> None:
    # A 10x step is far beyond a 50% buffer: the buffer cuts the first seconds' losses (seen:
    # 12% of the 10 s after the onset with it, 22% without), the re-plan does the rest.
    *_, with_spare = reaction(burst_buffer=True)
    *_, without = reaction(burst_buffer=False)
    assert with_spare < 0.7 * without


def test_a_loop_that_requeues_without_the_clock_moving_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The simulator stops with an error, not a hang, when the product's loop asks for passes
    that never come due (here: every pass after 10 s asks for another one at once)."""
    from accordion.operator.control.loop import ControlLoop

    reconcile = ControlLoop.reconcile

    async def eager(self: ControlLoop, *args: Any, **kwargs: Any) -> Any:
        result = await reconcile(self, *args, **kwargs)
        if self.clock() > 10.0:
            result.decision.requeue_after_s = 0.0
        return result

    monkeypatch.setattr(ControlLoop, "reconcile", eager)
    sim = Simulator(cluster(), step_workload(), Accordion(), SimConfig())
    with pytest.raises(RuntimeError, match=r"passes at t=.* without the clock moving"):
        sim.run()
