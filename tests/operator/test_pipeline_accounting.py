"""What the operator reports of a plan with pipelines: a DevicePool's `allocatedDevices`, the
plan-change counter and the service's `ReplicasChanged` event.

A pipeline row's `pool` and `replicas` name its first stage's pool and its pipeline replicas;
its devices are its stages' (`desired.row_devices`), and two pipelines of a variant may start
on the same pool (the twins of the burst buffer's and the swap count's bugs).
"""

from __future__ import annotations

from kubernetes import client as k8s

from accordion.operator.api import InferenceServiceStatus, PlanRowStatus
from accordion.operator.config import OperatorConfig
from accordion.operator.control.loop import RecordEvent, World
from accordion.operator.control.status import plan_events
from accordion.operator.handlers import Driver
from accordion.operator.metrics import REGISTRY, OperatorMetrics
from accordion.solver import PlanRow
from accordion.solver.plan import PlanStage

from .test_loop import pool
from .test_pipeline_swaps import SVC, _pipeline, _plan


def _row(low_devices: int, pipelines: int) -> PlanRow:
    """`pipelines` replicas of part a on lo (`low_devices` each) handing on to part b on gpu."""
    row = _pipeline("lo", "gpu", pipelines)
    stages = [
        PlanStage(
            pool=st.pool,
            first=st.first,
            last=st.last,
            replicas=pipelines * (low_devices if st.pool == "lo" else 1),
            devices_per_replica=low_devices if st.pool == "lo" else 1,
            max_batch_size=1,
            latency_s=0.03,
            output_bytes=st.output_bytes,
        )
        for st in row.stages
    ]
    return row.model_copy(
        update={"stages": stages, "pipeline": f"a..a@lo*{low_devices}>b..b@gpu*1"}
    )


def test_a_pools_allocated_devices_count_every_stage_on_its_pool() -> None:
    driver = Driver(config=OperatorConfig(watch_nodes=False), api_client=k8s.ApiClient())
    driver.loop.last_plan = _plan(_row(3, 2))
    world = World(pools={"lo": pool("lo", devices=8), "gpu": pool("gpu", devices=2)}, nodes=[])
    statuses = driver.pool_statuses(world)
    assert {name: body["allocatedDevices"] for name, body in statuses.items()} == {
        "lo": 6,
        "gpu": 2,
    }


def _changes() -> float:
    ns, name = SVC.split("/")
    labels = {"namespace": ns, "service": name}
    return REGISTRY.get_sample_value("accordion_operator_plan_changes_total", labels) or 0.0


def test_a_plan_that_swaps_one_pipeline_for_another_on_the_same_pool_is_a_change() -> None:
    metrics = OperatorMetrics()
    before = _changes()
    metrics._count_changes(_plan(_row(3, 1)).rows)
    assert _changes() == before + 1
    metrics._count_changes(_plan(_row(3, 1)).rows)
    assert _changes() == before + 1  # the same plan again: no change
    # Part a on 2 devices instead of 3: another pipeline, starting on lo as the first did.
    metrics._count_changes(_plan(_row(2, 1)).rows)
    assert _changes() == before + 2


def _status(pipeline: str) -> InferenceServiceStatus:
    row = PlanRowStatus(
        variant="big",
        pool="lo",
        replicas=1,
        max_batch_size=1,
        capacity_qps=30.0,
        routed_qps=30.0,
        weight=1.0,
        accuracy=80.0,
        pipeline=pipeline,
    )
    return InferenceServiceStatus(plan=[row])


def test_a_new_pipeline_on_the_same_first_pool_is_an_event_that_names_it() -> None:
    old, new = "a..a@lo*3>b..b@gpu*1", "a..a@lo*2>b..b@gpu*1"
    assert plan_events(SVC, _status(old), _status(old)) == []
    (event,) = plan_events(SVC, _status(old), _status(new))
    assert isinstance(event, RecordEvent)
    assert event.reason == "ReplicasChanged"
    assert f"big@{new} x1" in event.message


def test_a_variant_swap_of_a_service_with_no_demand_yet_is_an_accuracy_event() -> None:
    """With no demand measured (a router that has just started), the effective accuracy is
    unknown; a plan that swaps the variant still says which way accuracy went, at what its
    planned replicas serve (spare ones left out)."""

    def idle(variant: str, accuracy: float, spare: int = 0) -> InferenceServiceStatus:
        row = PlanRowStatus(
            variant=variant,
            pool="lo",
            replicas=1 + spare,
            spare_replicas=spare,
            max_batch_size=1,
            capacity_qps=45.0 * (1 + spare),
            routed_qps=0.0,
            weight=0.0,
            accuracy=accuracy,
        )
        return InferenceServiceStatus(plan=[row])

    events = plan_events(SVC, idle("xl", 84.0), idle("m", 79.0, spare=1))
    down = [e for e in events if isinstance(e, RecordEvent) and e.reason.startswith("Accuracy")]
    assert [(e.reason, e.message.split(" for ")[0]) for e in down] == [
        ("AccuracyScaledDown", "effective accuracy 84 -> 79")
    ]
