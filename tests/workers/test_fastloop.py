"""The router's pure decision object: weighted split, health skipping, fast loop, shedding."""

from __future__ import annotations

import math
import random
from collections import deque

import pytest

from accordion.workers.config import Backend, FastLoopBounds, RoutingTable
from accordion.workers.fastloop import RoutingDecider


def table(
    weights: dict[str, float],
    *,
    capacity: float | None = None,
    bounds: FastLoopBounds | None = None,
    slo_ms: float = 100.0,
) -> RoutingTable:
    accuracies = {"big": 0.84, "mid": 0.79, "small": 0.70}
    return RoutingTable(
        service="svc",
        slo_ms=slo_ms,
        backends=[
            Backend(
                name=n,
                url=f"http://127.0.0.1:{9000 + i}",
                weight=w,
                accuracy=accuracies.get(n, 0.5),
                capacity_qps=capacity,
            )
            for i, (n, w) in enumerate(weights.items())
        ],
        fast_loop=bounds or FastLoopBounds(),
    )


def split(decider: RoutingDecider, n: int, budget_s: float = 0.1) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _ in range(n):
        choice = decider.choose(budget_s)
        assert choice.backend is not None
        counts[choice.backend] = counts.get(choice.backend, 0) + 1
    return counts


def assert_matches(counts: dict[str, int], weights: dict[str, float]) -> None:
    n = sum(counts.values())
    total = sum(weights.values())
    for name, w in weights.items():
        p = w / total
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts.get(name, 0) - n * p) <= 4 * sigma + 1, (name, counts)


def test_split_matches_weights() -> None:
    weights = {"big": 0.6, "mid": 0.3, "small": 0.1}
    assert_matches(split(RoutingDecider(table(weights), seed=1), 20_000), weights)


def test_split_follows_a_table_change() -> None:
    decider = RoutingDecider(table({"big": 1.0, "small": 0.0}), seed=2)
    assert split(decider, 1000) == {"big": 1000}
    decider.update_table(table({"big": 0.25, "small": 0.75}))
    assert_matches(split(decider, 20_000), {"big": 0.25, "small": 0.75})


def test_unhealthy_backends_are_skipped() -> None:
    decider = RoutingDecider(table({"big": 0.5, "small": 0.5}), seed=3)
    decider.set_healthy("big", False)
    assert split(decider, 500) == {"small": 500}
    decider.set_healthy("small", False)
    choice = decider.choose(0.1)
    assert choice.backend is None
    assert "no healthy backend" in choice.reason


def test_fast_loop_shifts_within_bounds_and_returns_to_plan() -> None:
    bounds = FastLoopBounds(max_shift=0.5)
    decider = RoutingDecider(table({"big": 0.8, "small": 0.2}, capacity=100.0, bounds=bounds))
    assert decider.effective_weights() == pytest.approx({"big": 0.8, "small": 0.2})
    for _ in range(9):  # 90 ms of backlog at 100/s against a 100 ms SLO
        decider.sent("big")
    w = decider.effective_weights()
    assert w["big"] < 0.8
    assert w["big"] >= 0.8 * (1 - bounds.max_shift) - 1e-9
    assert sum(w.values()) == pytest.approx(1.0)
    for _ in range(9):
        decider.finished("big")
    assert decider.effective_weights() == pytest.approx({"big": 0.8, "small": 0.2})


def test_full_backend_reroutes_to_slack_then_sheds() -> None:
    decider = RoutingDecider(table({"big": 1.0, "small": 0.0}, capacity=100.0))
    for _ in range(10):  # big cannot answer a new request within 100 ms
        decider.sent("big")
    choices = [decider.choose(0.1) for _ in range(50)]
    assert {c.backend for c in choices} == {"small"}
    # Half of big's weight moved by the fast loop; the rest rerouted request by request.
    assert {c.rerouted_from for c in choices} == {None, "big"}
    for _ in range(10):
        decider.sent("small")
    shed = decider.choose(0.1)
    assert shed.backend is None
    assert "beyond planned capacity" in shed.reason


def test_accuracy_floor_bounds_rerouting() -> None:
    bounds = FastLoopBounds(min_accuracy=0.8)
    decider = RoutingDecider(table({"big": 1.0, "small": 0.0}, capacity=100.0, bounds=bounds))
    for _ in range(10):
        decider.sent("big")
    assert decider.choose(0.1).backend is None
    assert decider.effective_weights() == pytest.approx({"big": 1.0, "small": 0.0})


def test_disabled_fast_loop_only_follows_weights() -> None:
    bounds = FastLoopBounds(enabled=False)
    decider = RoutingDecider(table({"big": 1.0, "small": 0.0}, capacity=100.0, bounds=bounds))
    for _ in range(10):
        decider.sent("big")
    assert decider.choose(0.1).backend is None


def test_table_validation() -> None:
    with pytest.raises(ValueError, match="unique"):
        table({"big": 1.0}).model_validate(
            {**table({"big": 1.0}).model_dump(), "backends": [table({"big": 1.0}).backends[0]] * 2}
        )
    with pytest.raises(ValueError, match="positive weight"):
        table({"big": 0.0})


def test_router_and_config_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, accordion.workers.config, accordion.workers.router, "
        "accordion.workers.fastloop, accordion.workers.batching; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def batching_table(bounds: FastLoopBounds | None = None) -> RoutingTable:
    """big: batches of 8 in 100 ms (80/s); mid and small: faster, less accurate; SLO 300 ms."""
    specs = {"big": (0.84, 1.0, 0.100), "mid": (0.79, 0.0, 0.050), "small": (0.70, 0.0, 0.020)}
    return RoutingTable(
        service="svc",
        slo_ms=300.0,
        backends=[
            Backend(
                name=n,
                url="http://127.0.0.1:9000",
                weight=w,
                accuracy=acc,
                capacity_qps=8 / latency_s,
                max_batch_size=8,
                batch_latency_ms=latency_s * 1000,
            )
            for n, (acc, w, latency_s) in specs.items()
        ],
        fast_loop=bounds or FastLoopBounds(),
    )


def test_prediction_counts_the_running_batch_and_the_queue_behind_it() -> None:
    decider = RoutingDecider(batching_table())
    assert decider.predicted_wait_s("big", 1, now_s=0.0) == pytest.approx(0.1)  # idle: one batch
    for _ in range(8):
        decider.sent("big", now_s=0.0)  # one full batch starts at t=0
    # At t=0.05 half of the running batch is left, then one more batch.
    assert decider.predicted_wait_s("big", 1, now_s=0.05) == pytest.approx(0.05 + 0.1)
    # Without a clock the running batch is assumed to have just started.
    assert decider.predicted_wait_s("big", 1) == pytest.approx(0.2)
    for _ in range(16):
        decider.sent("big", now_s=0.05)
    # 16 queued + the new one drain at 80/s after the running batch.
    assert decider.predicted_wait_s("big", 1, now_s=0.05) == pytest.approx(0.05 + 17 / 80)
    for _ in range(8):
        decider.finished("big", now_s=0.1)  # the batch ended; the next one starts at 0.1
    assert decider.predicted_wait_s("big", 1, now_s=0.1) == pytest.approx(0.1 + 9 / 80)


def test_reroutes_to_the_most_accurate_backend_that_makes_the_deadline() -> None:
    decider = RoutingDecider(batching_table(FastLoopBounds(max_shift=0.0)))  # no relief shift
    for _ in range(24):
        decider.sent("big", now_s=0.0)  # 0.1 + 17/80 > 0.3: big is full
    for _ in range(4):
        decider.sent("mid", now_s=0.0)  # mid is busier than small but still in time
    choice = decider.choose(0.3, now_s=0.0)
    assert (choice.backend, choice.rerouted_from) == ("mid", "big")
    for _ in range(50):
        decider.sent("mid", now_s=0.0)  # now mid cannot make it either
    assert decider.choose(0.3, now_s=0.0).backend == "small"
    # A shorter budget than any backend's next answer: shed.
    assert decider.choose(0.01, now_s=0.0).backend is None


def test_relief_goes_to_the_most_accurate_backend_with_slack() -> None:
    decider = RoutingDecider(batching_table())
    for _ in range(24):
        decider.sent("big", now_s=0.0)
    weights = decider.effective_weights(now_s=0.0)
    assert weights["big"] == pytest.approx(0.5)  # pressure 1: max_shift of its weight moves
    assert weights["mid"] == pytest.approx(0.5)
    assert weights["small"] == 0.0


def test_smooth_weighted_round_robin_is_exact_over_a_cycle() -> None:
    decider = RoutingDecider(table({"big": 3.0, "small": 1.0}), seed=5)
    picks = [decider.choose(0.1).backend for _ in range(8)]
    assert picks.count("big") == 6
    assert picks.count("small") == 2
    # No burst: never more than three in a row to big.
    assert "bbbb" not in "".join("b" if p == "big" else "s" for p in picks * 2)


# -- online capacity correction ------------------------------------------------------------------


def drive(
    decider: RoutingDecider,
    name: str,
    *,
    start_s: float,
    batches: int,
    batch_s: float | list[float],
    batch: int = 8,
    backlog: int = 24,
) -> float:
    """Keep `backlog` requests at `name`, which answers `batch` of them every `batch_s` (one
    value, or one per batch); return the clock at the end."""
    now = start_s
    while decider.inflight(name) < backlog:
        decider.sent(name, now)
    for k in range(batches):
        now += batch_s[k] if isinstance(batch_s, list) else batch_s
        for _ in range(batch):
            decider.finished(name, now)
        while decider.inflight(name) < backlog:
            decider.sent(name, now)
    return now


def test_correction_converges_to_a_slower_true_rate() -> None:
    # big is planned at 80/s (batches of 8 in 100 ms) but takes 150 ms per batch.
    decider = RoutingDecider(batching_table(FastLoopBounds(max_shift=0.0)))
    now = drive(decider, "big", start_s=0.0, batches=8, batch_s=0.1)  # as planned first
    assert decider.slowdown("big", now) == 1.0
    now = drive(decider, "big", start_s=now, batches=40, batch_s=0.15)
    assert decider.slowdown("big", now) == pytest.approx(1.5)
    assert decider.effective_capacity_qps("big", now) == pytest.approx(80 / 1.5)
    # The backlog drains at the observed rate, with batches as long as observed.
    for _ in range(8):
        decider.finished("big", now)
    assert decider.inflight("big") == 16
    assert decider.predicted_wait_s("big", 1, now) == pytest.approx(0.15 + 9 / (80 / 1.5))
    # So a request the plan would still send to big (0.1 + 9/80 < 0.3) is rerouted.
    choice = decider.choose(0.3, now)
    assert (choice.backend, choice.rerouted_from) == ("mid", "big")
    # Other backends keep their plan.
    assert decider.slowdown("mid", now) == 1.0


def test_correction_ignores_a_single_outlier_and_thin_data() -> None:
    decider = RoutingDecider(batching_table())
    # Batches 2 and 3 are measured (each against the one before; the last is still open), and
    # one of them stalled for 2 s: thin data, no correction.
    now = drive(decider, "big", start_s=0.0, batches=4, batch_s=[0.1, 2.0, 0.1, 0.1])
    assert len(decider._states["big"].samples) == 2
    assert decider.slowdown("big", now) == 1.0
    # Among batches at the planned speed, the outlier never moves the median.
    stalls = [0.1] * 40
    stalls[17] = 2.0
    now = drive(decider, "big", start_s=now, batches=40, batch_s=stalls)
    assert decider.slowdown("big", now) == 1.0


def test_correction_recovers_when_the_backend_is_healthy_again() -> None:
    decider = RoutingDecider(batching_table())
    now = drive(decider, "big", start_s=0.0, batches=20, batch_s=0.2)
    assert decider.slowdown("big", now) == pytest.approx(2.0)
    # Back at its planned speed: fresh samples replace the slow ones (a high quantile: it
    # trusts the plan again once nearly all recent batches agree).
    now = drive(decider, "big", start_s=now, batches=8, batch_s=0.1)
    assert decider.slowdown("big", now) == pytest.approx(2.0)
    now = drive(decider, "big", start_s=now, batches=10, batch_s=0.1)
    assert decider.slowdown("big", now) == 1.0
    # Or no evidence at all for a while (the backlog drained): the plan's figure comes back.
    now = drive(decider, "big", start_s=now, batches=20, batch_s=0.2)
    assert decider.slowdown("big", now) == pytest.approx(2.0)
    for _ in range(decider.inflight("big")):
        decider.finished("big", now)
    assert decider.slowdown("big", now + 5.0) == pytest.approx(2.0)
    assert decider.slowdown("big", now + 10.5) == 1.0
    # A new plan with another capacity for big is trusted afresh.
    now = drive(decider, "big", start_s=now + 20, batches=20, batch_s=0.2)
    assert decider.slowdown("big", now) == pytest.approx(2.0)
    table = batching_table()
    replanned = table.model_copy(
        update={"backends": [table.backends[0].model_copy(update={"capacity_qps": 60.0}),
                             *table.backends[1:]]}
    )  # fmt: skip
    decider.update_table(replanned)
    assert decider.slowdown("big", now) == 1.0


def test_small_batches_idle_spells_and_drops_are_no_evidence() -> None:
    decider = RoutingDecider(batching_table())
    # Batches of 4 (the batcher's choice, e.g. under tight deadlines) taking the planned
    # latency of 8: that is not a slower device.
    now = drive(decider, "big", start_s=0.0, batches=20, batch_s=0.1, batch=4, backlog=12)
    assert decider._states["big"].samples == deque()
    # Full batches, each after an idle spell (nothing in hand when the last one was answered).
    for _ in range(decider.inflight("big")):
        decider.finished("big", now)
    for _ in range(10):
        for _ in range(8):
            decider.sent("big", now)
        now += 0.5
        for _ in range(8):
            decider.finished("big", now)
    assert decider._states["big"].samples == deque()
    # Drops between slow full batches neither form batches nor hide them.
    for _ in range(24):
        decider.sent("big", now)
    for _ in range(20):
        for _ in range(3):
            decider.finished("big", now + 0.05, "dropped")
        now += 0.15
        for _ in range(8):
            decider.finished("big", now)
        while decider.inflight("big") < 24:
            decider.sent("big", now)
    assert decider.slowdown("big", now) == pytest.approx(1.5)


def test_with_a_profile_every_batch_size_is_evidence() -> None:
    table = batching_table()
    profile = {1: 30.0, 4: 60.0, 8: 100.0}  # big's latency per batch size (ms)
    big = table.backends[0].model_copy(update={"profile_ms": profile})
    decider = RoutingDecider(table.model_copy(update={"backends": [big, *table.backends[1:]]}))
    # Batches of 4 at their profiled latency (60 ms): as planned.
    now = drive(decider, "big", start_s=0.0, batches=20, batch_s=0.06, batch=4, backlog=12)
    assert decider.slowdown("big", now) == 1.0
    # Batches of 6 (profile: 80 ms, interpolated) taking 120 ms: 1.5 times slower.
    now = drive(decider, "big", start_s=now, batches=20, batch_s=0.12, batch=6, backlog=18)
    assert decider.slowdown("big", now) == pytest.approx(1.5)
    # Batches of 2 (under half the planned 8) are no evidence: what the worker adds per batch
    # weighs too much on them.
    later = drive(decider, "big", start_s=now + 20, batches=20, batch_s=0.09, batch=2)
    assert decider.slowdown("big", later) == 1.0


def test_with_a_profile_the_running_batch_is_predicted_at_its_size() -> None:
    """Five requests at big run as a batch of at most 5 (70 ms by the profile, interpolated),
    not a full batch of 8 (100 ms); what queues behind them waits for a full batch (arrivals
    join it); at an idle backend a request starts at once, as a batch of its own."""
    table = batching_table()
    big = table.backends[0].model_copy(update={"profile_ms": {1: 30.0, 4: 60.0, 8: 100.0}})
    decider = RoutingDecider(table.model_copy(update={"backends": [big, *table.backends[1:]]}))
    plain = RoutingDecider(table)
    # Idle, big starts on a request at once: alone (30 ms by the profile), or without a
    # profile for all the router knows a full batch.
    assert decider.predicted_wait_s("big", 1, now_s=0.0) == pytest.approx(0.03)
    assert decider.predicted_wait_s("big", 5, now_s=0.0) == pytest.approx(0.07)
    assert plain.predicted_wait_s("big", 1, now_s=0.0) == pytest.approx(0.1)
    for d in (decider, plain):
        for _ in range(5):
            d.sent("big", 0.0)
    assert decider.predicted_wait_s("big", 0, now_s=0.0) == pytest.approx(0.07)
    assert decider.predicted_wait_s("big", 1, now_s=0.0) == pytest.approx(0.07 + 0.1)
    assert decider.predicted_wait_s("big", 1, now_s=0.05) == pytest.approx(0.02 + 0.1)
    assert plain.predicted_wait_s("big", 1, now_s=0.0) == pytest.approx(0.1 + 0.1)
    # A full backlog runs a full batch, and the queue drains at the capacity's pace.
    for d in (decider, plain):
        for _ in range(5):
            d.sent("big", 0.0)
    for d in (decider, plain):
        assert d.predicted_wait_s("big", 20, now_s=0.0) == pytest.approx(0.1 + 22 / 80)


def test_too_slow_for_its_planned_batch_it_is_not_shed_what_it_may_serve() -> None:
    """Twice slower, big's planned batch of 8 (2 x 200 ms) no longer fits the 300 ms SLO: the
    router counts on a full batch for rerouting, but before shedding it predicts with the batch
    the planner would choose at that speed (5: 2 x 140 ms, from the profile)."""
    table = batching_table(FastLoopBounds(enabled=False))
    big = table.backends[0].model_copy(update={"profile_ms": {1: 30.0, 4: 60.0, 8: 100.0}})
    decider = RoutingDecider(table.model_copy(update={"backends": [big, *table.backends[1:]]}))
    now = drive(decider, "big", start_s=0.0, batches=20, batch_s=0.2)
    assert decider.slowdown("big", now) == pytest.approx(2.0)
    while decider.inflight("big") > 5:
        decider.finished("big", now, "dropped")
    # The running batch of 5 (140 ms at 2x), then a full one (200 ms).
    assert decider.predicted_wait_s("big", 1, now) == pytest.approx(0.34)
    assert decider.predicted_wait_s("big", 1, now, replan=True) == pytest.approx(0.28)
    assert decider.choose(0.3, now).backend == "big"
    assert decider.choose(0.25, now).backend is None


def test_before_shedding_the_pick_is_predicted_at_its_median_speed() -> None:
    """Batches mostly at the planned speed with a slow tail (3 of the last 15 twice as long: a
    throttled CPU): the 0.9 quantile (2x) decides rerouting, but a request is shed only if
    even the median speed (1x) would not answer it in time."""
    decider = RoutingDecider(batching_table(FastLoopBounds(enabled=False)))
    pattern = [0.1] * 5 + [0.2] + [0.1] * 4 + [0.2] + [0.1] * 4 + [0.2] + [0.1] * 4
    now = drive(decider, "big", start_s=0.0, batches=len(pattern), batch_s=pattern)
    assert decider.slowdown("big", now) == pytest.approx(2.0)
    assert decider.slowdown("big", now, central=True) == 1.0
    while decider.inflight("big") > 8:
        decider.finished("big", now, "dropped")
    # A full batch running (just started), one more behind it.
    assert decider.predicted_wait_s("big", 1, now) == pytest.approx(0.2 + 0.2)
    assert decider.predicted_wait_s("big", 1, now, central=True) == pytest.approx(0.1 + 0.1)
    assert decider.choose(0.3, now).backend == "big"  # sent: a typical batch makes it
    shed = decider.choose(0.15, now)  # not even then
    assert shed.backend is None
    assert "beyond planned capacity" in shed.reason
    # Workers that report their median are taken at their word; one that does not is taken
    # at its quantile.
    reported = RoutingDecider(batching_table(FastLoopBounds(enabled=False)))
    reported.sent("big", 0.0)
    reported.sent("big", 0.0)
    reported.finished("big", 0.1, "answered", ("pod-a:8080", 3.0, 1.2))
    assert reported.slowdown("big", 0.1) == pytest.approx(3.0)
    assert reported.slowdown("big", 0.1, central=True) == pytest.approx(1.2)
    reported.finished("big", 0.1, "answered", ("pod-b:8080", 2.0))
    assert reported.slowdown("big", 0.1, central=True) == pytest.approx(2 / (1 / 1.2 + 1 / 2.0))


def test_several_replicas_behind_one_backend_are_not_corrected() -> None:
    table = batching_table()
    big = table.backends[0].model_copy(update={"capacity_qps": 160.0})  # 2 devices of 80/s
    decider = RoutingDecider(table.model_copy(update={"backends": [big, *table.backends[1:]]}))
    now = drive(decider, "big", start_s=0.0, batches=20, batch_s=0.2)
    assert decider.slowdown("big", now) == 1.0


def test_worker_reports_replace_the_inference_and_cover_several_replicas() -> None:
    table = batching_table(FastLoopBounds(max_shift=0.0))
    big = table.backends[0].model_copy(update={"capacity_qps": 160.0})  # 2 devices of 80/s
    decider = RoutingDecider(table.model_copy(update={"backends": [big, *table.backends[1:]]}))
    for _ in range(4):
        decider.sent("big", 0.0)
    # The first answer that says so counts at once: no groups, no back-to-back batches.
    decider.finished("big", 0.1, "answered", ("pod-a:8080", 3.0))
    assert decider.slowdown("big", 0.1) == pytest.approx(3.0)
    # Two replicas behind one address: their capacity together, 2 / (1/3 + 1/1) = 1.5x.
    decider.finished("big", 0.2, "answered", ("pod-b:8080", 1.0))
    assert decider.slowdown("big", 0.2) == pytest.approx(1.5)
    assert decider.effective_capacity_qps("big", 0.2) == pytest.approx(160 / 1.5)
    # A replica faster than planned earns no credit; within the tolerance it is the plan.
    decider.finished("big", 0.3, "answered", ("pod-a:8080", 0.5))
    assert decider.slowdown("big", 0.3) == 1.0
    decider.finished("big", 0.4, "answered", ("pod-a:8080", 1.04))
    assert decider.slowdown("big", 0.4) == 1.0
    # Reports age out: a replica not heard from within the horizon no longer counts.
    decider.sent("big", 5.0)
    decider.finished("big", 5.0, "answered", ("pod-b:8080", 2.0))
    assert decider.slowdown("big", 5.0) == pytest.approx(2 / (1 / 1.04 + 1 / 2.0))
    assert decider.slowdown("big", 10.5) == pytest.approx(2.0)
    assert decider.slowdown("big", 15.1) == 1.0
    # Only answers count (a drop is no evidence); a new capacity forgets the reports.
    decider.sent("big", 15.1)
    decider.sent("big", 15.1)
    decider.finished("big", 15.2, "dropped", ("pod-a:8080", 9.0))
    assert decider.slowdown("big", 15.2) == 1.0
    decider.finished("big", 15.2, "answered", ("pod-a:8080", 2.5))
    assert decider.slowdown("big", 15.2) == pytest.approx(2.5)
    decider.update_table(table)  # big back to one device of 80/s
    assert decider.slowdown("big", 15.2) == 1.0
    # Without the correction, reports change nothing; without worker_reports, the router
    # infers from the answers' timing as for a backend that sends none.
    off = RoutingDecider(batching_table(FastLoopBounds(correct_capacity=False)))
    off.sent("big", 0.0)
    off.finished("big", 0.1, "answered", ("pod-a:8080", 3.0))
    assert off.slowdown("big", 0.1) == 1.0
    timing = RoutingDecider(batching_table(FastLoopBounds(worker_reports=False)))
    timing.sent("big", 0.0)
    timing.finished("big", 0.1, "answered", ("pod-a:8080", 3.0))
    assert timing.slowdown("big", 0.1) == 1.0
    assert not timing._states["big"].reports
    now = drive(timing, "big", start_s=0.1, batches=20, batch_s=0.2)
    assert timing.slowdown("big", now) == pytest.approx(2.0)


def test_no_observations_behave_exactly_as_before() -> None:
    """Overloaded traffic on backends at their planned speed or faster: identical decisions with
    the correction on and off (and without a clock no correction is ever learned)."""
    rng = random.Random(7)
    on = RoutingDecider(batching_table(), seed=3)
    off = RoutingDecider(batching_table(FastLoopBounds(correct_capacity=False)), seed=3)
    clockless = RoutingDecider(batching_table(), seed=3)
    names = ("big", "mid", "small")
    running: dict[str, tuple[float, int] | None] = dict.fromkeys(names)  # (ends at, batch)
    speed = {"big": 1.0, "mid": 0.9, "small": 0.8}  # share of the planned batch latency

    def serve(until: float) -> None:
        for name in names:
            while True:
                current = running[name]
                if current is None:
                    if not on.inflight(name):
                        break
                    # A batch starts when the last one ended (or at the send that woke it).
                    latency = (on.backend(name).batch_latency_ms or 0.0) / 1000.0 * speed[name]
                    start = last_end.get(name, until)
                    running[name] = current = (start + latency, min(8, on.inflight(name)))
                end, size = current
                if end > until:
                    break
                for _ in range(size):
                    on.finished(name, end)
                    off.finished(name, end)
                running[name] = None
                last_end[name] = end

    last_end: dict[str, float] = {}
    now = 0.0
    for _ in range(20_000):
        now += rng.expovariate(150.0)
        serve(now)
        for name in names:
            if running[name] is None:
                last_end.pop(name, None)
        budget = rng.uniform(0.1, 0.3)
        a, b = on.choose(budget, now), off.choose(budget, now)
        assert a == b
        if a.backend is not None:
            on.sent(a.backend, now)
            off.sent(a.backend, now)
        c = clockless.choose(budget)
        if c.backend is not None:
            clockless.sent(c.backend)
            if rng.random() < 0.5:
                clockless.finished(c.backend, outcome="dropped")
    assert all(on.slowdown(n, now) == 1.0 for n in names)
    assert all(clockless.slowdown(n) == 1.0 for n in names)
    assert len(on._states["big"].samples) >= 3  # big was saturated: windows did close


def test_a_retry_goes_to_the_backends_that_did_not_drop_it() -> None:
    """`choose(exclude=...)`: a request a worker dropped goes to one of the others, by their
    weights, or evenly when only spare (zero-weight) backends are left; none left: shed."""
    decider = RoutingDecider(table({"big": 0.6, "mid": 0.4, "small": 0.0}), seed=1)
    picks = {decider.choose(0.1, exclude={"big"}).backend for _ in range(50)}
    assert picks == {"mid"}
    spare = {decider.choose(0.1, exclude={"big", "mid"}).backend for _ in range(10)}
    assert spare == {"small"}
    none = decider.choose(0.1, exclude={"big", "mid", "small"})
    assert none.backend is None
    assert none.reason == "no healthy backend left"
