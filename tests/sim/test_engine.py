"""The event engine: ordering, hand-checked outcomes, determinism, conservation, transitions."""

from __future__ import annotations

from accordion.sim.engine import SimConfig, simulate
from accordion.sim.metrics import DROPPED, LATE, OK
from accordion.sim.policies import Accordion
from accordion.sim.policy import Target
from accordion.solver import Allocation
from accordion.workers.batching import LatencyPredictor, SloBatcher

from .conftest import FixedPolicy, row, small_cluster, workload


def test_fifo_device_hand_checked() -> None:
    # One device, 0.1 s per request, SLO 0.25 s, no batching: the third request waits for two.
    result = simulate(small_cluster(), workload([0.0, 0.01, 0.02]), FixedPolicy([row()]))
    assert result.outcome == {0: OK, 1: OK, 2: LATE}
    s = result.summary
    assert (s.ok, s.late, s.dropped, s.demand) == (2, 1, 0, 3)
    assert s.violation_ratio == 1 / 3
    assert s.effective_accuracy == 100.0


def test_completion_runs_before_an_arrival_at_the_same_instant() -> None:
    # The first batch ends at exactly 0.1; the arrival at 0.1 finds the device free and
    # finishes at 0.2 (deadline 0.35). With the wrong order it would still be ok, so check
    # the third: it arrives at 0.1 too and must finish at 0.3 <= 0.35.
    result = simulate(small_cluster(), workload([0.0, 0.1, 0.1]), FixedPolicy([row()]))
    assert result.outcome == {0: OK, 1: OK, 2: OK}


def test_no_replica_means_dropped() -> None:
    result = simulate(small_cluster(), workload([0.0, 0.5]), FixedPolicy([]))
    assert result.outcome == {0: DROPPED, 1: DROPPED}


def test_pool_size_caps_the_target() -> None:
    # Asking for 3 replicas on a 1-device pool gets one device.
    result = simulate(
        small_cluster(devices=1), workload([0.0, 2.0]), FixedPolicy([row(replicas=3)])
    )
    assert max(s.devices for s in result.seconds) == 1.0
    assert result.summary.device_seconds <= 3.0 + 1e-9  # the run ends at the 3rd second tick


def test_deterministic_for_a_seed_with_drawn_service_times() -> None:
    arrivals = [i * 0.013 for i in range(400)]
    cfg = SimConfig(seed=7, service_time="dist")
    cluster = small_cluster(devices=2)
    a = simulate(cluster, workload(arrivals), Accordion(), cfg)
    b = simulate(cluster, workload(arrivals), Accordion(), cfg)
    assert a.outcome == b.outcome
    assert [s.accuracy_sum for s in a.seconds] == [s.accuracy_sum for s in b.seconds]


def test_conservation_every_request_ends_once() -> None:
    arrivals = [i * 0.004 for i in range(1500)]  # 250 QPS: overload for this cluster
    result = simulate(small_cluster(devices=2), workload(arrivals), Accordion())
    s = result.summary
    assert len(result.outcome) == len(arrivals)
    assert s.ok + s.late + s.dropped == s.demand == len(arrivals)
    assert sum(x.demand for x in result.seconds) == len(arrivals)


class _Switch(FixedPolicy):
    """big until t=1, then small."""

    def target(
        self, now_s: float, demand_qps: dict[str, float], current: list[Allocation]
    ) -> Target:
        return Target(rows=[row("big" if now_s < 1 else "small")])


def test_make_before_break_with_a_free_device_old_replica_serves_while_new_loads() -> None:
    # The target switches from "big" to "small" at t=1; the load takes 2 s on the pool's free
    # device, so requests in [1, 3) are still served by "big" (accuracy 100), later ones by
    # "small" (80).
    arrivals = [0.5, 1.5, 2.5, 3.5]
    result = simulate(
        small_cluster(devices=2),
        workload(arrivals),
        _Switch([], replan_interval_s=1.0),
        SimConfig(model_load_s=2.0),
    )
    per_sec = {s.second: s for s in result.seconds}
    assert [per_sec[t].accuracy_sum for t in (0, 1, 2, 3)] == [100.0, 100.0, 100.0, 80.0]


def test_one_model_per_device_a_full_pool_breaks_before_it_makes() -> None:
    # One device: "small" can only load once "big" has drained and freed it (as Kubernetes
    # schedules GPUs), so the requests of [1, 3) find no replica.
    arrivals = [0.5, 1.5, 2.5, 3.5]
    result = simulate(
        small_cluster(devices=1),
        workload(arrivals),
        _Switch([], replan_interval_s=1.0),
        SimConfig(model_load_s=2.0),
    )
    assert result.outcome == {0: OK, 1: DROPPED, 2: DROPPED, 3: OK}
    assert max(s.devices for s in result.seconds) == 1.0


def test_slo_batcher_drops_the_hopeless_instead_of_serving_late() -> None:
    arrivals = [i * 0.005 for i in range(200)]
    policy = FixedPolicy(
        [row(max_batch=4)],
        factory=lambda: SloBatcher(4, LatencyPredictor({1: 0.1, 2: 0.15, 4: 0.2})),
    )
    result = simulate(small_cluster(), workload(arrivals), policy)
    s = result.summary
    assert s.late == 0
    assert s.dropped > 0
    assert s.ok > 0


def test_the_routers_own_decider_drives_routing_and_conserves_requests() -> None:
    arrivals = [i * 0.004 for i in range(1500)]
    policy = Accordion()
    result = simulate(small_cluster(devices=2), workload(arrivals), policy)
    s = result.summary
    assert s.ok + s.late + s.dropped == len(arrivals)
    assert s.ok > 0
    again = simulate(
        small_cluster(devices=2),
        workload(arrivals),
        Accordion(),
    )
    assert again.outcome == result.outcome


def test_mix_weighted_accuracy_does_not_reward_dropping_the_less_accurate_family() -> None:
    from accordion.sim.metrics import Recorder

    rec = Recorder(family_of=[0, 0, 1, 1])
    for rid in range(4):
        rec.arrival(rid, 0.0)
    rec.finish(0, 0.0, OK, 100.0)
    rec.finish(1, 0.0, OK, 100.0)
    rec.finish(2, 0.0, OK, 90.0)
    rec.finish(3, 0.0, DROPPED)
    s = rec.summary("p", 0.0)
    assert s.effective_accuracy == (100.0 + 100.0 + 90.0) / 3  # the drop raised it
    assert s.mix_accuracy == (2 * 100.0 + 2 * 90.0) / 4
