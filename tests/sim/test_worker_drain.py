"""A removed worker drains in the simulator as the product's does (`accordion.workers.drain`,
`KubernetesActuator.sweep_worker_services`): routers whose loaded table still names its group
reach it through its Service, and it holds its device until a second has passed without a
request (`workers.drainSeconds` at most). With a drain of 0 (the simulator before) those
requests find nothing behind the Service and the device is free at once."""

from __future__ import annotations

from accordion.sim.driver import WORKER_DRAIN_S, LoopControl
from accordion.sim.engine import Control, SimConfig, Simulator
from accordion.sim.metrics import OK
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec
from accordion.workers.drain import QUIET_S

REMOVE_AT_S = 6
LOAD_S = 2.0
SLO_S = 1.0


class Drains(Accordion):
    def __init__(self, drain_s: float) -> None:
        super().__init__(burst_buffer=False, name="ours")
        self.drain_s = drain_s

    def control(self, sim: Simulator) -> Control:
        return LoopControl(
            sim, timings=self.timings, burst_buffer=False, worker_drain_s=self.drain_s
        )


def run(drain_s: float) -> tuple[Simulator, list[float], list[int]]:
    """20 req/s for 14 s on a pool of two devices; at 6 s the one worker group is removed
    while the router's table names it (as `ControlLoop._make_room` does), and the loop makes
    it again at its next pass (a new replica: the pool's other device, then its load)."""
    points = [ProfilePoint(batch_size=b, p50_s=0.01 * (1 + 0.25 * (b - 1))) for b in (1, 2, 4)]
    family = Family("f", SLO_S, (VariantSpec(name="v", accuracy=80.0, profiles={"g": points}),))
    cluster = Cluster(pools=(PoolSpec(name="g", devices=2),), families=(family,))
    arrivals = [i * 0.05 for i in range(280)]
    workload = Workload(["f"], arrivals, [0] * len(arrivals), [a + SLO_S for a in arrivals])
    sim = Simulator(cluster, workload, Drains(drain_s), SimConfig(model_load_s=LOAD_S))
    control = sim.control
    assert isinstance(control, LoopControl)

    def remove() -> None:
        [key] = control.groups
        control.remove(key)
        control._request(control.timings.debounce_s)  # the operator's watch sees it go

    sim.call_at(REMOVE_AT_S, remove)
    result = sim.run()
    outcomes = [result.outcome[i] for i in range(len(arrivals))]
    return sim, [s.devices for s in result.seconds], outcomes


def window(outcomes: list[int], start_s: float, end_s: float) -> list[int]:
    return outcomes[round(start_s / 0.05) : round(end_s / 0.05)]


def test_a_removed_group_serves_what_its_routers_send_until_its_successor_is_ready() -> None:
    """The pass at 6.5 s makes the group again (loading until 8.5 s) and writes a table that
    names it as pending. The router has that backend in its split already, so it sends on
    through the Service, where the draining replica answers while no new one is ready (as
    kube-proxy sends to serving, terminating endpoints when no ready one is left); from 8.5 s
    the new replica takes them, and a second after its last request the old one gives its
    device back. Nothing is lost."""
    assert WORKER_DRAIN_S == 5.0  # the operator's default
    assert QUIET_S == 1.0  # the worker's
    sim, devices, outcomes = run(WORKER_DRAIN_S)
    assert outcomes == [OK] * 280
    old = sim.replicas[0]
    assert old.state == "gone"
    last = REMOVE_AT_S + 0.5 + LOAD_S - 0.05  # the new replica is ready at 8.5 s
    assert abs(old.quiet_end_s - (last + QUIET_S)) < 1e-6
    # 6-9 s: the old replica held its device, serving, beside the new one.
    assert devices[REMOVE_AT_S : REMOVE_AT_S + 4] == [2.0, 2.0, 2.0, 1.0]


def test_without_the_drain_they_find_nothing_behind_the_service() -> None:
    _, devices, outcomes = run(0.0)
    assert window(outcomes, 0.0, REMOVE_AT_S) == [OK] * 120
    assert OK not in window(outcomes, REMOVE_AT_S, REMOVE_AT_S + 1.0)
    assert devices[REMOVE_AT_S] == 1.0, "the removed replica's device was free at once"
