"""The router's pure decision object: weighted split, health skipping, fast loop, shedding."""

from __future__ import annotations

import math

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
