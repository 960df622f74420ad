"""Cellular variants in the simulator (`accordion.sim.staged`): the product's loop plans a
variant with step profiles and request lengths, its workers are configured cellular, and each
replica runs the worker's `CellularScheduler` step by step: a request is answered when its own
last step has run, so short requests do not wait for long ones (issue 18)."""

from __future__ import annotations

import random
import statistics

import pytest

from accordion.sim.driver import LoopControl
from accordion.sim.engine import Control, Replica, Simulator
from accordion.sim.metrics import OK
from accordion.sim.policies import Accordion
from accordion.sim.staged import CellularReplicaPolicy, length_of
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec
from accordion.solver.cellular import SequenceLengths
from accordion.workers.batching import Request

SLO_S = 1.0
LENGTHS = SequenceLengths(mean_steps=50, tail_steps=300)
STEP = [
    ProfilePoint(batch_size=b, p50_s=s)
    for b, s in ((1, 0.0004), (4, 0.0006), (8, 0.0008), (16, 0.0011), (32, 0.0016))
]


class Recording(LoopControl):
    """The product's loop, recording when each request was answered."""

    def __init__(self, sim: Simulator, policy: Accordion) -> None:
        super().__init__(sim, timings=policy.timings)
        self.latency_s: dict[int, float] = {}

    def finished(self, replica: Replica, request: Request, outcome: str) -> None:
        super().finished(replica, request, outcome)
        if outcome == "answered":
            self.latency_s[request.request_id] = self.sim.now_s - request.arrival_s


class Ours(Accordion):
    def control(self, sim: Simulator) -> Control:
        return Recording(sim, self)


def run(rate: float = 150.0, seconds: float = 20.0) -> tuple[Simulator, Recording, int]:
    variant = VariantSpec(name="gru", accuracy=80.0, step_profiles={"cpu": STEP}, lengths=LENGTHS)
    cluster = Cluster(
        pools=(PoolSpec(name="cpu", devices=4),), families=(Family("seq", SLO_S, (variant,)),)
    )
    rng = random.Random(3)
    arrivals, t = [], 0.0
    while (t := t + rng.expovariate(rate)) < seconds:
        arrivals.append(t)
    workload = Workload(["seq"], arrivals, [0] * len(arrivals), [a + SLO_S for a in arrivals])
    sim = Simulator(cluster, workload, Ours(name="ours"))
    result = sim.run()
    ok = sum(1 for k in result.outcome.values() if k == OK)
    control = sim.control
    assert isinstance(control, Recording)
    return sim, control, ok


def test_a_cellular_variant_runs_per_step_and_short_requests_leave_early() -> None:
    sim, control, ok = run()
    n = len(sim.workload.arrival_s)
    assert sim.replicas
    assert all(isinstance(r.policy, CellularReplicaPolicy) for r in sim.replicas)
    assert ok >= 0.99 * n
    length = length_of(LENGTHS)
    short = [s for i, s in control.latency_s.items() if length(i) <= 10]
    long = [s for i, s in control.latency_s.items() if length(i) >= 150]
    assert len(short) > 50
    assert len(long) > 20
    # per step, a request takes its own length in steps: a short one is answered long before
    # a long one that ran beside it (a request-level batch answers them together)
    assert statistics.median(short) * 5 < statistics.median(long)
    # one step of 32 takes 1.6 ms: a 10-step request alone in its batch, 16 ms at most
    assert statistics.median(short) < 0.03


def test_lengths_are_long_tailed_with_the_stated_mean_and_p99() -> None:
    draw = length_of(LENGTHS)
    sample = sorted(draw(i) for i in range(20_000))
    assert statistics.mean(sample) == pytest.approx(50, rel=0.08)
    assert sample[int(0.99 * len(sample))] == pytest.approx(300, rel=0.1)
    assert draw(17) == draw(17)  # a request's length is the same whoever serves it
