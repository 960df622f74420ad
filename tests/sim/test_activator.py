"""The router's activator in the simulator (`accordion.sim.activator`): a request that reaches a
scaled-to-zero service is held, wakes the operator's loop at once, and is answered when the
replica it started is ready; one whose deadline the cold start passes is dropped then, and
the cold start is measured as the router measures it."""

from __future__ import annotations

from typing import Any

from accordion.operator.api import InferenceService, parse_resource
from accordion.sim.driver import LoopControl, family_service
from accordion.sim.engine import Control, SimConfig, Simulator
from accordion.sim.metrics import DROPPED, OK
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec

IDLE_S = 10.0
LOAD_S = 2.0


def cluster(slo_s: float) -> Cluster:
    points = [ProfilePoint(batch_size=b, p50_s=0.01 * (1 + 0.25 * (b - 1))) for b in (1, 2, 4)]
    family = Family("f", slo_s, (VariantSpec(name="v", accuracy=80.0, profiles={"g": points}),))
    return Cluster(pools=(PoolSpec(name="g", devices=4),), families=(family,))


def to_zero(fam: Family, service_time: str, initial_qps: float) -> InferenceService:
    obj = family_service(fam, service_time, initial_qps).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    obj["spec"]["minReplicas"] = 0
    obj["spec"]["scaleToZeroIdleSeconds"] = IDLE_S
    svc = parse_resource(obj, "f")
    assert isinstance(svc, InferenceService)
    return svc


class ScaleToZero(Accordion):
    def control(self, sim: Simulator) -> Control:
        return LoopControl(sim, timings=self.timings, services=to_zero)


def run(slo_s: float, late: list[float]) -> tuple[Simulator, Any, list[int]]:
    """10 s at 5 req/s, then nothing (no periodic pass at 70.05 s) until the `late` arrivals."""
    arrivals = [i * 0.2 for i in range(50)] + late
    workload = Workload(["f"], arrivals, [0] * len(arrivals), [a + slo_s for a in arrivals])
    sim = Simulator(
        cluster(slo_s), workload, ScaleToZero(name="ours"), SimConfig(model_load_s=LOAD_S)
    )
    result = sim.run()
    return sim, result, list(range(50, 50 + len(late)))


def test_a_request_at_zero_replicas_is_held_and_answered_after_the_cold_start() -> None:
    # SLO 5 s: the cold start (a pass, then the model's load) fits within it.
    sim, result, late_ids = run(5.0, [70.05, 70.3, 70.6])
    devices = [s.devices for s in result.seconds]
    assert all(d == 0 for d in devices[int(IDLE_S) + 12 : 69])  # scaled to zero
    assert [result.outcome[i] for i in late_ids] == [OK, OK, OK]  # none lost
    control = sim.control
    assert isinstance(control, LoopControl)
    [(service, seconds)] = control.activators.cold_starts
    assert service == "sim/f"
    # Woken by the first held request, not by the next periodic measurement: the cold start
    # is the operator's debounce (0.5 s), the model's load, and the router's table reload.
    assert LOAD_S <= seconds <= LOAD_S + 0.6


def test_a_wake_just_after_a_periodic_pass_waits_the_debounce_only() -> None:
    """The periodic pass at 90 s (every 30 s), a request at 90.05 s: its pass follows the
    operator's debounce (0.5 s), as a wake does in the operator, not the loop's 1 s between
    demand passes (the sparse trace's sessions begin on a periodic pass: 0.5 s more cold start
    each)."""
    sim, result, late_ids = run(5.0, [90.05, 90.3])
    assert [result.outcome[i] for i in late_ids] == [OK, OK]
    control = sim.control
    assert isinstance(control, LoopControl)
    [(_, seconds)] = control.activators.cold_starts
    assert LOAD_S <= seconds <= LOAD_S + 0.6


def test_held_requests_that_the_cold_start_makes_late_are_dropped_at_their_deadline() -> None:
    sim, result, late_ids = run(0.5, [70.05, 70.3])
    assert [result.outcome[i] for i in late_ids] == [DROPPED, DROPPED]
    control = sim.control
    assert isinstance(control, LoopControl)
    assert control.activators.waiting("sim/f") == 0
    # A replica was started for them all the same (the pass they woke, after the operator's
    # debounce of 0.5 s: before the next periodic measurement at 71 s).
    assert any(70.05 + LOAD_S <= r.ready_at_s <= 70.6 + LOAD_S for r in sim.replicas)
