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
