"""The simulator serves a plan's pipeline rows as the data plane does (`accordion.sim.pipelines`):
the operator's ControlLoop plans a 2-stage pipeline, the router sends to its first stage, each
stage batches against its share of the deadline, and a batch reaches the next stage after the
transfer time of the cut's tensor."""

from __future__ import annotations

import pytest

from accordion.sim.engine import SimConfig, Simulator
from accordion.sim.metrics import DROPPED, OK
from accordion.sim.pipelines import Link, stage_variant
from accordion.sim.policies import Accordion
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PlannerSettings, PoolSpec, ProfilePoint, VariantSpec
from accordion.solver.problem import StageSpec

SLO_S = 0.2
PART_S = 0.040
CUT_BYTES = 1_250_000
"""1 ms over the default link (10 Gb/s), plus its 0.5 ms per hand-over."""


def _points(latency_s: float) -> list[ProfilePoint]:
    return [ProfilePoint(batch_size=1, p50_s=latency_s, p90_s=latency_s)]


def _cluster() -> Cluster:
    """One device on each of two pools; the whole model (300 ms) fits the SLO nowhere, its two
    parts (40 ms each; the first profiled on pool a only, the second on b only) as a
    pipeline do. The first part's name is dotted, as `accordion profile --split` names a
    block cut inside a top-level child."""
    variant = VariantSpec(
        name="m",
        accuracy=90.0,
        profiles={"a": _points(0.3)},
        stages=[
            StageSpec(name="layer1.0", output_bytes=CUT_BYTES, profiles={"a": _points(PART_S)}),
            StageSpec(name="head", profiles={"b": _points(PART_S)}),
        ],
    )
    return Cluster(
        pools=(PoolSpec(name="a", devices=1), PoolSpec(name="b", devices=1)),
        families=(Family(name="f", slo_s=SLO_S, variants=(variant,)),),
    )


def _workload(arrivals: list[float]) -> Workload:
    return Workload(
        families=["f"],
        arrival_s=arrivals,
        family=[0] * len(arrivals),
        deadline_s=[a + SLO_S for a in arrivals],
    )


def _run(planner: PlannerSettings | None = None) -> tuple[Simulator, dict[int, float]]:
    sim = Simulator(
        _cluster(),
        _workload([1.0, 1.0, 1.0, 3.0]),
        Accordion(planner=planner),
        SimConfig(service_time="p50"),
    )
    ended: dict[int, float] = {}
    finish = sim.recorder.finish

    def timed(request_id: int, arrival_s: float, kind: int, accuracy: float = 0.0) -> None:
        ended[request_id] = sim.now_s
        finish(request_id, arrival_s, kind, accuracy)

    sim.recorder.finish = timed  # type: ignore[method-assign]
    sim.run()
    return sim, ended


def test_two_stage_pipeline_served_as_hand_computed() -> None:
    sim, ended = _run()
    plan = sim.control.loop.last_plan  # type: ignore[attr-defined]
    assert plan is not None
    [row] = plan.rows
    assert [(st.pool, st.first, st.last) for st in row.stages] == [
        ("a", "layer1.0", "layer1.0"),
        ("b", "head", "head"),
    ]
    hand_s = Link().transfer_s(1, CUT_BYTES)
    assert hand_s == pytest.approx(0.0015)
    # Stage 1 batches against the deadline less stage 2's share (twice its batch latency and
    # the hand-over: 81.5 ms), so by 1.1185 s. Three requests at 1.0 s, batch cap 1:
    #  0: stage 1 1.000-1.040, hand-over to 1.0415, stage 2 to 1.0815: on time;
    #  1: stage 1 1.040-1.080, stage 2 1.0815-1.1215: on time;
    #  2: stage 1 could only end at 1.120, after 1.1185: dropped by stage 1's batcher;
    #  3 (3.0 s): as 0.
    assert sim.recorder.outcome == {0: OK, 1: OK, 2: DROPPED, 3: OK}
    assert ended[0] == pytest.approx(1.0 + 2 * PART_S + hand_s)
    assert ended[1] == pytest.approx(1.0 + 3 * PART_S + hand_s)
    assert ended[3] == pytest.approx(3.0 + 2 * PART_S + hand_s)
    assert sim.recorder.family_ok[0] == 3
    # Each pool ran its stage for the three requests served, nothing else.
    assert sim.busy_s_by_pool["a"] == pytest.approx(3 * PART_S)
    assert sim.busy_s_by_pool["b"] == pytest.approx(3 * PART_S)
    assert sim.control.handover.handed == 3  # type: ignore[attr-defined]


def test_without_pipelines_the_model_is_served_nowhere() -> None:
    """The same world with pipelines turned off (`pipeline_max_stages: 1`): no plan row."""
    sim, _ = _run(PlannerSettings(pipeline_max_stages=1))
    assert sim.recorder.family_ok[0] == 0
    assert set(sim.recorder.outcome.values()) == {DROPPED}
    assert not sim.busy_s_by_pool.get("a")
    assert not sim.busy_s_by_pool.get("b")


def test_stage_variant_sums_its_parts() -> None:
    variant = VariantSpec(
        name="m",
        accuracy=90.0,
        profiles={"a": _points(0.3)},
        stages=[
            StageSpec(
                name=f"p{i}",
                profiles={
                    "a": [
                        ProfilePoint(batch_size=1, p50_s=0.01 * i, p90_s=0.02 * i),
                        ProfilePoint(batch_size=2, p50_s=0.015 * i),
                    ]
                },
            )
            for i in (1, 2, 3)
        ],
    )
    stage = stage_variant(variant, "p2", "p3", "a")
    points = stage.profiles["a"]
    assert [p.batch_size for p in points] == [1, 2]
    assert [p.p50_s for p in points] == pytest.approx([0.05, 0.075])
    assert [p.p90_s for p in points] == pytest.approx([0.10, 0.075])
    with pytest.raises(ValueError, match=r"no parts p3\.\.p2"):
        stage_variant(variant, "p3", "p2", "a")


def test_a_short_pipeline_service_is_said_to_be_short_of_its_stages_devices() -> None:
    """In overload the service's Degraded condition names the stages' pools as full, not "no
    variant can meet the SLO" (its whole model fits nowhere; its pipeline does)."""
    arrivals = [1.0 + i / 100 for i in range(300)]  # 100 req/s; the pipeline serves 25
    sim = Simulator(_cluster(), _workload(arrivals), Accordion(), SimConfig(service_time="p50"))
    sim.run()
    [status] = sim.control.world.status.values()  # type: ignore[attr-defined]
    [degraded] = [c for c in status.conditions if c.type == "Degraded"]
    assert degraded.status == "True"
    assert "every device of a (1/1), b (1/1) is planned" in degraded.message
    assert "no variant" not in degraded.message


def test_a_spare_pipelines_capacity_is_sampled_as_spare() -> None:
    """The timeline's sample counts a pipeline's spare replicas in its first stage's devices:
    part a takes 3 devices of pool a per pipeline replica (120 ms against part b's 40 ms), so
    one spare pipeline replica is 3 spare stage-1 replicas, not 1."""
    variant = VariantSpec(
        name="m",
        accuracy=90.0,
        profiles={"a": _points(0.3)},
        stages=[
            StageSpec(name="layer1.0", output_bytes=CUT_BYTES, profiles={"a": _points(0.12)}),
            StageSpec(name="head", profiles={"b": _points(PART_S)}),
        ],
    )
    cluster = Cluster(
        pools=(PoolSpec(name="a", devices=3), PoolSpec(name="b", devices=1)),
        families=(Family(name="f", slo_s=0.5, variants=(variant,)),),
    )
    workload = Workload(families=["f"], arrival_s=[1.0, 2.0], family=[0, 0], deadline_s=[1.5, 2.5])
    sim = Simulator(cluster, workload, Accordion(), SimConfig(service_time="p50"))
    sim.run()
    control = sim.control
    plan = control.loop.last_plan  # type: ignore[attr-defined]
    [row] = plan.rows
    assert [(st.pool, st.devices_per_replica) for st in row.stages] == [("a", 3), ("b", 1)]
    assert row.spare_replicas == 0
    sample = control.sample("f")
    assert sample is not None
    assert sample.planned_qps == pytest.approx(row.capacity_qps_per_replica)
    assert sample.spare_qps == 0.0
    # The same replicas, the plan's row now a spare one: all of its capacity is spare.
    control.loop.last_plan = plan.model_copy(  # type: ignore[attr-defined]
        update={"rows": [row.model_copy(update={"spare_replicas": 1})]}
    )
    sample = control.sample("f")
    assert sample is not None
    assert sample.planned_qps == pytest.approx(0.0)
    assert sample.spare_qps == pytest.approx(row.capacity_qps_per_replica)
