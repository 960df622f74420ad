"""A request a worker drops is sent on to another backend, as the router does
(`fast_loop.drop_retries`): on simulated time, the product's loop (`LoopControl`) at a burst's
onset, where planned replicas drop what their queues cannot answer in time and spare replicas
stand ready.
"""

from __future__ import annotations

import pytest

from accordion.sim.driver import LoopControl
from accordion.sim.engine import SimConfig, SimResult, Simulator
from accordion.sim.policies import Accordion

from .test_burst_reaction import cluster, step_workload


def run() -> tuple[SimResult, LoopControl]:
    sim = Simulator(cluster(), step_workload(), Accordion(), SimConfig())
    result = sim.run()
    assert isinstance(sim.control, LoopControl)
    return result, sim.control


def test_a_workers_drop_is_answered_elsewhere_when_a_backend_can(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with_resend, control = run()
    assert control.resent > 0
    assert not control._dropped_by  # nothing left in the router's memory at the end
    monkeypatch.setattr(LoopControl, "resend", lambda self, replica, request: None)
    without, _ = run()
    for result in (with_resend, without):
        s = result.summary
        # Every request has exactly one outcome: a retried one is not counted twice.
        assert s.ok + s.late + s.dropped == s.demand == len(step_workload().arrival_s)
    assert with_resend.summary.dropped < without.summary.dropped
    # Each request sent on and answered in time is one drop fewer.
    assert with_resend.summary.ok - without.summary.ok > 0
