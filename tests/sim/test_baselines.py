"""Each baseline's defining behaviour on small hand-checked scenarios, and the oracle bound."""

from __future__ import annotations

import pytest

from accordion.sim.engine import SimConfig, simulate
from accordion.sim.oracle import oracle_bound
from accordion.sim.policies import Clipper, HardwareOnly, InfaasGreedy
from accordion.sim.policy import SimView
from accordion.sim.proteus import Proteus, ProteusBatcher, proteus_throughput
from accordion.workers.batching import ClipperAimd, Request, TritonDynamicBatcher

from .conftest import small_cluster, workload

PROFILE = {1: 0.1, 2: 0.15, 4: 0.2}


def _req(i: int, arrival: float, deadline: float) -> Request:
    return Request(i, arrival, deadline)


def test_proteus_batcher_waits_until_the_heads_last_moment() -> None:
    b = ProteusBatcher(4, PROFILE)
    b.enqueue(_req(0, 0.0, 0.3), 0.0)
    d = b.decide(0.0)
    assert d.batch == ()
    assert d.wake_at_s == pytest.approx(0.2)  # 0.3 - L(1)
    b.enqueue(_req(1, 0.05, 0.35), 0.05)
    d = b.decide(0.05)
    assert d.batch == ()
    assert d.wake_at_s == pytest.approx(0.15)  # 0.3 - L(2): a bigger batch must leave earlier
    d = b.decide(0.15)
    assert [r.request_id for r in d.batch] == [0, 1]


def test_proteus_batcher_sends_a_full_batch_at_once_and_drops_the_hopeless() -> None:
    b = ProteusBatcher(2, PROFILE)
    b.enqueue(_req(0, 0.0, 0.05), 0.0)  # cannot make it even alone (L(1) = 0.1)
    b.enqueue(_req(1, 0.0, 0.3), 0.0)
    b.enqueue(_req(2, 0.0, 0.3), 0.0)
    d = b.decide(0.0)
    assert [x.request.request_id for x in d.dropped] == [0]
    assert [r.request_id for r in d.batch] == [1, 2]


def test_proteus_throughput_is_the_artifacts() -> None:
    # Largest batch under SLO / 2 = 0.125 s is 1 (0.1 s): floor(1 * 1000 / 100) = 10.
    assert proteus_throughput(PROFILE, 0.25) == (1, 10)
    assert proteus_throughput(PROFILE, 0.5) == (4, 20)
    assert proteus_throughput({1: 0.3}, 0.25) is None


def _proteus(devices: int) -> Proteus:
    p = Proteus()
    p.setup(SimView(small_cluster(devices=devices), "p50"))
    return p


def _variants(target_rows: list[tuple[str, int, float]]) -> dict[str, int]:
    return {v: n for v, n, _ in target_rows}


def test_proteus_allocator_maximizes_accuracy_under_the_throughput_target() -> None:
    # big: 10 QPS per device at accuracy 100; small: 80 QPS (batch 4 in 0.05 s) at 80.
    p = _proteus(2)
    rows = [(r.variant, r.replicas, r.routed_qps) for r in p.target(0, {"f": 15.0}, []).rows]
    assert _variants(rows) == {"big": 2}  # 20 >= 1.05 * 15
    assert p.last_beta == pytest.approx(1.05)
    rows = [(r.variant, r.replicas, r.routed_qps) for r in p.target(0, {"f": 100.0}, []).rows]
    assert _variants(rows) == {"small": 2}  # big + small = 90 < 105


def test_proteus_backs_off_beta_when_infeasible() -> None:
    p = _proteus(2)
    # 160 QPS at most; below 1.5 beta backs off by 0.05: 1.05 ... 0.85 fail, 0.8 * 200 = 160.
    p.target(0, {"f": 200.0}, [])
    assert p.last_beta == pytest.approx(0.8)


def test_proteus_upgrades_idle_devices_to_the_most_accurate_variant() -> None:
    p = _proteus(3)
    rows = p.target(0, {"f": 0.0}, []).rows
    assert [(r.variant, r.replicas, r.routed_qps) for r in rows] == [("big", 3, 0.0)]


def test_clipper_fixes_the_most_or_least_accurate_variant_with_aimd() -> None:
    view = SimView(small_cluster(devices=2), "p50")
    ha, ht = Clipper(high_accuracy=True), Clipper(high_accuracy=False)
    ha.setup(view)
    ht.setup(view)
    assert [v.name for v in ha.variants()["f"]] == ["big"]
    assert [v.name for v in ht.variants()["f"]] == ["small"]
    fam = view.cluster.families[0]
    assert isinstance(ha.batcher(fam, fam.variants[0], "gpu", 4), ClipperAimd)
    rows = ht.target(0, {"f": 100.0}, []).rows
    assert {r.variant for r in rows} == {"small"}


def test_hardware_only_scales_replicas_of_one_variant() -> None:
    hw = HardwareOnly()
    hw.setup(SimView(small_cluster(devices=4), "p50"))
    low = hw.target(0, {"f": 2.0}, []).rows
    high = hw.target(0, {"f": 20.0}, []).rows
    assert {r.variant for r in low + high} == {"big"}
    assert sum(r.replicas for r in high) > sum(r.replicas for r in low)


def test_infaas_replicates_then_downgrades_then_upgrades() -> None:
    g = InfaasGreedy()
    g.setup(SimView(small_cluster(devices=2), "p50"))

    def alloc() -> dict[str, int]:
        return {v: n for (_, v, _), n in g.alloc.items()}

    g.target(0, {"f": 5.0}, [])
    assert alloc() == {"big": 1}  # 9 QPS at 90% utilization
    g.target(0, {"f": 15.0}, [])
    assert alloc() == {"big": 2}  # replicate: no accuracy cost while a device is free
    g.target(0, {"f": 30.0}, [])
    assert "small" in alloc()  # no free device: downgrade, the least accuracy lost
    g.target(0, {"f": 5.0}, [])
    assert alloc() == {"big": 1}  # demand fell: release, then upgrade while capacity covers it
    fam = g.view.cluster.families[0]
    assert isinstance(g.batcher(fam, fam.variants[0], "gpu", 1), TritonDynamicBatcher)


def test_oracle_bound_hand_checked() -> None:
    arrivals = [0.1 * i for i in range(5)] + [1 + i / 50 for i in range(50)]
    arrivals += [2 + i / 100 for i in range(100)]
    bound = oracle_bound(small_cluster(devices=1), workload(arrivals))
    s0, s1, s2 = bound.seconds
    assert s0.served == pytest.approx(5)
    assert s0.accuracy == pytest.approx(100)
    # 50 QPS on one fractional device: r_big / 10 + r_small / 80 <= 1 -> r_big = 30 / 7.
    assert s1.served == pytest.approx(50)
    assert s1.accuracy == pytest.approx((30 / 7 * 100 + (50 - 30 / 7) * 80) / 50)
    assert s2.served == pytest.approx(80)
    assert bound.served_fraction == pytest.approx(135 / 155)


def test_proteus_in_the_simulator_never_serves_late_with_p50_times() -> None:
    arrivals = [i * 0.01 for i in range(600)]
    result = simulate(small_cluster(devices=2), workload(arrivals), Proteus(), SimConfig())
    assert result.summary.late == 0
    assert result.summary.ok > 0
