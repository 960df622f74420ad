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


def test_a_removed_group_serves_what_its_routers_send_until_they_reload() -> None:
    """The pass at 6.5 s makes the group again (loading until 8.5 s) and writes a table with
    nothing ready in it, which the router loads at 7 s (it then holds requests, as in a
    cluster); until then the draining replica answers, and a second after its last request
    gives its device back."""
    assert WORKER_DRAIN_S == 5.0  # the operator's default
    assert QUIET_S == 1.0  # the worker's
    sim, devices, outcomes = run(WORKER_DRAIN_S)
    assert window(outcomes, 0.0, REMOVE_AT_S + 1.0) == [OK] * 140
    old = sim.replicas[0]
    assert old.state == "gone"
    last = REMOVE_AT_S + 1.0 - 0.05
    assert abs(old.quiet_end_s - (last + QUIET_S)) < 1e-6
    # At 7 s (the second from 6 s): held through its quiet second, beside the new one.
    assert devices[REMOVE_AT_S] == 2.0
    assert set(window(outcomes, REMOVE_AT_S + LOAD_S + 1.0, 14.0)) == {OK}


def test_without_the_drain_they_find_nothing_behind_the_service() -> None:
    _, devices, outcomes = run(0.0)
    assert window(outcomes, 0.0, REMOVE_AT_S) == [OK] * 120
    assert OK not in window(outcomes, REMOVE_AT_S, REMOVE_AT_S + 1.0)
    assert devices[REMOVE_AT_S] == 1.0, "the removed replica's device was free at once"
