"""The sparse-trace bench's pre-issue-17 baseline (`bench/serverless/pre_serverless.py`): the
product as it planned before its serverless work. Where it differs from ours with scale to
zero, on one service that starts with no demand, has 10 s of requests, then none:

* a service whose estimate is zero runs no worker (no replica floor), where ours keeps one
  from when the loop first sees it (Knative's initial scale of 1) and answers every request;
* a request that finds no ready replica is shed at once: no activator holds it, though the
  SLO (5 s) would let it wait out the cold start;
* once it has had requests its replica stays through any silence (no idle period), where ours
  releases it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.sim.engine import SimConfig, SimResult, Simulator
from accordion.sim.metrics import DROPPED, OK
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec
from bench.serverless.pre_serverless import PreServerless, PreServerlessControl
from bench.serverless.sparse_trace import Serverless

SLO_S = 5.0
"""Long enough for a held request to be answered after a cold start (2 s load)."""
START_S, STOP_S, END_S = 10.0, 20.0, 80.0


def cluster() -> Cluster:
    points = [ProfilePoint(batch_size=b, p50_s=0.01 * (1 + 0.25 * (b - 1))) for b in (1, 2, 4)]
    family = Family("f", SLO_S, (VariantSpec(name="v", accuracy=80.0, profiles={"g": points}),))
    return Cluster(pools=(PoolSpec(name="g", devices=4),), families=(family,))


def run(policy: Accordion) -> tuple[Simulator, SimResult]:
    """Nothing for 10 s, 5 req/s from 10 to 20 s, nothing until 80 s."""
    arrivals = [START_S + i * 0.2 for i in range(int((STOP_S - START_S) / 0.2))]
    workload = Workload(["f"], arrivals, [0] * len(arrivals), [a + SLO_S for a in arrivals])
    sim = Simulator(cluster(), workload, policy, SimConfig(model_load_s=2.0, end_s=END_S))
    return sim, sim.run()


def test_pre17_runs_no_worker_at_zero_estimate_and_sheds_until_one_is_ready() -> None:
    sim, result = run(PreServerless(utilization=None, name="pre17"))
    assert isinstance(sim.control, PreServerlessControl)
    devices = [s.devices for s in result.seconds]
    # No demand measured: no worker (today's default minReplicas 1 would keep one).
    assert all(d == 0 for d in devices[1 : int(START_S)])
    outcomes = [result.outcome[i] for i in range(len(sim.workload))]
    # The first requests find no ready replica and are shed at once, not held: the SLO (5 s)
    # would have let every one of them wait out the cold start.
    assert outcomes[0] == DROPPED
    shed = outcomes.index(OK)
    assert shed >= 10  # a measurement, a pass and the 2 s load: 2 s of 5 req/s at least
    assert all(o == DROPPED for o in outcomes[:shed])
    assert all(o == OK for o in outcomes[shed:])
    # Nothing held: the activator never saw a request.
    assert sim.control.activators.waiting("sim/f") == 0
    assert not sim.control.activators.cold_starts
    # No idle period: the replica stays through the minute of silence after the requests.
    assert all(d >= 1 for d in devices[int(STOP_S) : int(END_S)])


def test_ours_holds_the_same_requests_and_scales_to_zero() -> None:
    """The bench's ours (minReplicas 0, at most 90 s idle; its idle period here 3 x the 10 s
    cold start assumed before one is measured) on the same arrivals: released at 50 s."""
    sim, result = run(Serverless(batching_model=True, utilization=None, name="ours"))
    devices = [s.devices for s in result.seconds]
    assert [result.outcome[i] for i in range(len(sim.workload))] == [OK] * len(sim.workload)
    assert all(d == 0 for d in devices[int(STOP_S) + 40 : int(END_S)])
