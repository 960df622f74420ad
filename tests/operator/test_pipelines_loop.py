"""The control loop with a planned pipeline, without Kubernetes (the memory actuator).

What the kmock test (test_pipelines_operator.py) cannot see from the API server's objects: the
order of the make steps (a stage's next stage is made first, so a process actuator knows the
address it hands on to), and that a loop started afresh over running stage groups (an operator
restart) plans and changes nothing.
"""

from __future__ import annotations

from typing import Any

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.control.loop import (
    ControlLoop,
    DemandView,
    EnsureWorker,
    RemoveWorker,
    World,
)

from .test_loop import NO_DRAIN, Clock, MemoryActuator, all_ready, pool


def _profile(pool_name: str, ms: float) -> dict[str, Any]:
    return {"pool": pool_name, "batches": [{"batchSize": 1, "p50Ms": ms}]}


def _service() -> InferenceService:
    svc = parse_resource(
        {
            "apiVersion": "accordion.dev/v1alpha1",
            "kind": "InferenceService",
            "metadata": {"name": "svc", "namespace": "default", "uid": "u1", "generation": 1},
            "spec": {
                "slo": {"latencyMs": 100},
                "demand": {
                    "source": "Static",
                    "qps": 80,
                    "headroom": 0.0,
                    "burst": {"policy": "Off"},
                },
                "variants": [
                    {
                        "name": "big",
                        "accuracy": 80,
                        "model": {"storageUri": "/models/big.pt"},
                        "profiles": [_profile("hi", 20), _profile("lo", 60)],
                        "stages": [
                            {"name": "a", "profiles": [_profile("hi", 10), _profile("lo", 30)]},
                            {"name": "b", "profiles": [_profile("hi", 10), _profile("lo", 30)]},
                        ],
                    }
                ],
            },
        }
    )
    assert isinstance(svc, InferenceService)
    return svc


def _world() -> World:
    return World(
        services={"default/svc": _service()},
        pools={"hi": pool("hi", devices=1), "lo": pool("lo", devices=4)},
    )


async def test_stages_are_made_last_first_and_a_restart_changes_nothing() -> None:
    world, clock = _world(), Clock()
    loop = ControlLoop(NO_DRAIN, clock=clock)
    act = MemoryActuator(world, clock)
    res = await loop.reconcile(world, DemandView(), act)
    made = [s.spec for s in res.applied if isinstance(s, EnsureWorker)]
    assert [(s.key.stage, s.key.pool) for s in made] == [(1, "lo"), (0, "hi")]
    assert [s.stage.next if s.stage else None for s in made] == [None, made[0].key]
    # Not named before the whole pipeline is ready: a pipeline is never pending (its first
    # stage's health check says nothing of the later stages).
    assert world.routing["default/svc"].routing.routes == []

    all_ready(world)
    res = await loop.reconcile(world, DemandView(), act)
    (route,) = world.routing["default/svc"].routing.routes
    assert route.key == made[1].key, "the router sends to the first stage"
    assert not route.pending
    assert route.capacity_qps == 90.0

    assert (await loop.reconcile(world, DemandView(), act)).applied == []

    # Less demand (30 req/s): one whole replica on the fast device would serve it too, but
    # that is a new replica and the running pipeline is none: the plan keeps the pipeline
    # (the planner's running allocation names it). So does a loop started afresh over the
    # running stage groups (an operator restart): no step, no churn.
    less = DemandView(qps={"default/svc": 30.0})
    res = await loop.reconcile(world, less, act)
    assert not [s for s in res.applied if isinstance(s, EnsureWorker | RemoveWorker)]
    assert loop.last_plan is not None
    assert [r.pipeline for r in loop.last_plan.rows] == [route.key.pipeline]
    fresh = ControlLoop(NO_DRAIN, clock=clock)
    decision = fresh.decide(world, less)
    assert decision.plan is not None
    assert [r.pipeline for r in decision.plan.rows] == [route.key.pipeline]
    assert not [s for s in decision.steps if isinstance(s, EnsureWorker | RemoveWorker)]
