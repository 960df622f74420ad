"""The Knative-style autoscaler baseline (`accordion.sim.knative`) behaves as the KPA documents:
scale to zero after the stable window and the grace period without requests, back from zero
at the first request (held by the activator, answered after the cold start), and panic on a
burst (scale up within seconds, no scale-down while panicking)."""

from __future__ import annotations

from accordion.sim import POLICIES
from accordion.sim.engine import SimConfig, Simulator
from accordion.sim.knative import (
    PANIC_WINDOW_S,
    SCALE_TO_ZERO_GRACE_S,
    STABLE_WINDOW_S,
    TICK_S,
    Knative,
)
from accordion.sim.workload import Cluster, Family, Workload
from accordion.solver import PoolSpec, ProfilePoint, VariantSpec

SLO_S = 0.2


def cluster() -> Cluster:
    points = [ProfilePoint(batch_size=b, p50_s=0.01 * (1 + 0.25 * (b - 1))) for b in (1, 2, 4)]
    family = Family("f", SLO_S, (VariantSpec(name="v", accuracy=80.0, profiles={"g": points}),))
    return Cluster(pools=(PoolSpec(name="g", devices=16),), families=(family,))


def workload(pieces: list[tuple[float, float, float]]) -> Workload:
    """Evenly spaced arrivals: (start, end, rate) pieces."""
    arrivals: list[float] = []
    for start, end, rate in pieces:
        t = start
        while t < end:
            arrivals.append(t)
            t += 1.0 / rate
    return Workload(["f"], arrivals, [0] * len(arrivals), [a + SLO_S for a in arrivals])


def devices_by_second(pieces: list[tuple[float, float, float]]) -> tuple[list[float], object]:
    sim = Simulator(cluster(), workload(pieces), Knative(), SimConfig())
    result = sim.run()
    return [s.devices for s in result.seconds], result


def test_scales_to_zero_after_the_stable_window_and_grace_and_back_at_a_request() -> None:
    # 20 s of traffic, 200 s idle, one more request.
    devices, result = devices_by_second([(0.0, 20.0, 20.0), (220.0, 220.5, 4.0)])
    idle_from = 20.0
    gone = next(i for i, d in enumerate(devices) if i > idle_from and d == 0)
    # Not before the stable window plus the grace period; within two ticks after.
    assert idle_from + STABLE_WINDOW_S + SCALE_TO_ZERO_GRACE_S <= gone
    assert gone <= idle_from + STABLE_WINDOW_S + SCALE_TO_ZERO_GRACE_S + 2 * TICK_S + 1
    assert all(d == 0 for d in devices[gone:219])
    # The request at zero started a pod at once (the activator holds the requests until it is
    # ready; after a 2 s cold start their 200 ms deadline is gone, so the batcher drops them).
    assert devices[220] >= 1
    assert any("scale from zero" in n for n in result.notes)  # type: ignore[attr-defined]


def test_a_burst_panics_and_scales_up_within_the_panic_window() -> None:
    # 30 s at 20 req/s, then 10x.
    devices, _ = devices_by_second([(0.0, 30.0, 20.0), (30.0, 60.0, 200.0)])
    before = devices[25]
    after = max(devices[30 : 30 + int(PANIC_WINDOW_S) + 4])
    assert after >= 2 * before
    # In panic: no scale-down while the burst lasts.
    assert min(devices[40:60]) >= after


def test_registered_as_a_simulator_policy() -> None:
    assert isinstance(POLICIES["knative"](), Knative)
