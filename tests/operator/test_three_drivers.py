"""One control loop, three drivers: the kopf operator, local mode and the simulator take the
same steps for the same world and demand.

Each driver builds its `ControlLoop` as it does when it runs (the operator's `Driver` from its
default configuration, `accordion up`'s `LocalRuntime` from the example manifests, the
simulator's `LoopControl` for ours); the test then feeds the three the same world and demand,
pass after pass (start, workers ready, demand past the accurate variant's capacity, the new
workers ready), and compares every step. Only `status.url` differs by design (the router's
Service in a cluster, its port in local mode, none in the simulator).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from accordion.local.actuator import free_port
from accordion.local.runtime import LocalRuntime, RuntimeSettings
from accordion.operator.config import OperatorConfig
from accordion.operator.control.loop import ControlLoop, DemandView, Step, UpdateStatus, World
from accordion.operator.handlers import Driver
from accordion.sim.engine import SimConfig, Simulator
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec

from .test_loop import EXAMPLE, EXAMPLE_SERVICE, Clock, MemoryActuator, all_ready, example_world

SERVICE = EXAMPLE_SERVICE


def operator_loop() -> ControlLoop:
    return Driver(config=OperatorConfig(watch_nodes=False), api_client=k8s.ApiClient()).loop


def local_loop(tmp_path: Path) -> ControlLoop:
    runtime = LocalRuntime([EXAMPLE], tmp_path, RuntimeSettings(base_port=free_port()))
    return runtime.loop


def simulator_loop() -> ControlLoop:
    variant = VariantSpec(
        name="v", accuracy=90, profiles={"p": [ProfilePoint(batch_size=1, p50_s=0.01)]}
    )
    cluster = Cluster(
        pools=(PoolSpec(name="p", devices=1),),
        families=(Family(name="f", slo_s=0.1, variants=(variant,)),),
    )
    workload = Workload(families=["f"], arrival_s=[0.5], family=[0], deadline_s=[0.6])
    control: Any = Simulator(cluster, workload, Accordion(), SimConfig()).control
    loop: ControlLoop = control.loop
    return loop


def without_url(steps: list[Step]) -> list[Any]:
    return [
        UpdateStatus(s.service, s.status.model_copy(update={"url": None}))
        if isinstance(s, UpdateStatus)
        else s
        for s in steps
    ]


def drive(loop: ControlLoop, world: World, clock: Clock) -> list[list[Any]]:
    """The steps of four passes: start, ready, demand past capacity, ready again."""
    loop.clock = clock
    act = MemoryActuator(world, clock)
    passes = []
    for qps, ready in ((None, True), (None, False), (120.0, True), (120.0, False)):
        demand = DemandView(qps={} if qps is None else {SERVICE: qps})
        clock.t += 10.0
        result = asyncio.run(loop.reconcile(world, demand, act))
        passes.append(without_url(result.applied))
        if ready:
            all_ready(world)
    return passes


def test_the_operator_local_mode_and_the_simulator_take_the_same_steps(tmp_path: Path) -> None:
    start = example_world()
    loops = {
        "operator": operator_loop(),
        "local": local_loop(tmp_path),
        "simulator": simulator_loop(),
    }
    # The same defaults everywhere, but the operator's drain (its routers read a mounted
    # ConfigMap, which the kubelet refreshes with a delay; see README).
    settings = {name: loop.settings for name, loop in loops.items()}
    assert settings["local"] == settings["simulator"]
    assert settings["operator"].planner == settings["local"].planner
    assert settings["operator"].hysteresis == settings["local"].hysteresis
    runs = {name: drive(loop, copy.deepcopy(start), Clock()) for name, loop in loops.items()}
    assert runs["operator"] == runs["local"] == runs["simulator"]
    # And the passes did something: workers made, routed, a variant switched.
    kinds = [sorted({type(s).__name__ for s in p}) for p in runs["local"]]
    assert "EnsureWorker" in kinds[0]
    assert "ApplyRouting" in kinds[1]
    assert "EnsureWorker" in kinds[2]
