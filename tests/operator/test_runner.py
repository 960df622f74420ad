"""The step runner (`control/runner.py`): make steps first, then each service's routing and
break steps, then statuses and events; a failed make holds back its service's break steps."""

from __future__ import annotations

from accordion.operator.control.desired import Routing, WorkerKey
from accordion.operator.control.runner import run_steps
from accordion.operator.control.steps import (
    ApplyRouting,
    RecordEvent,
    RemoveWorker,
    Step,
)


class Recorder:
    """An actuator that records each step, and fails the steps of `fail`."""

    def __init__(self, fail: frozenset[str] = frozenset()) -> None:
        self.applied: list[tuple[str, str]] = []
        self.fail = fail

    async def apply(self, step: Step) -> None:
        if (step.service, step.phase) in {(s, "route") for s in self.fail}:
            raise RuntimeError("refused")
        self.applied.append((step.service, step.phase))


def _steps(service: str) -> list[Step]:
    return [
        ApplyRouting(service=service, routing=Routing(service=service, slo_ms=100.0)),
        RemoveWorker(key=WorkerKey(service=service, variant="v", pool="p")),
        RecordEvent(service=service, type="Normal", reason="Planned", message="m"),
    ]


async def test_statuses_and_events_go_after_every_services_routing_and_workers() -> None:
    steps = [*_steps("a"), *_steps("b"), *_steps("c")]
    for concurrency in (1, 16):
        actuator = Recorder()
        applied, failed = await run_steps(steps, actuator, concurrency=concurrency)
        assert not failed
        assert len(applied) == len(steps)
        phases = [phase for _, phase in actuator.applied]
        last_data = max(i for i, p in enumerate(phases) if p != "status")
        first_status = min(i for i, p in enumerate(phases) if p == "status")
        assert last_data < first_status, phases
        # Within a service, its routing still goes before its break.
        for svc in "abc":
            mine = [p for s, p in actuator.applied if s == svc]
            assert mine == ["route", "break", "status"]


async def test_a_failed_step_holds_back_its_services_break_steps_only() -> None:
    actuator = Recorder(fail=frozenset({"b"}))
    _, failed = await run_steps([*_steps("a"), *_steps("b")], actuator)
    assert [step.service for step, _ in failed] == ["b"]
    assert ("b", "break") not in actuator.applied
    assert ("a", "break") in actuator.applied
    assert ("b", "status") in actuator.applied  # the user is still told
