"""The idle period of a `minReplicas: 0` service follows what its routers measure
(`control.idle.idle_period_s`): a silence its own traffic makes often keeps the replica, a
silence of a few measured cold starts after busy traffic releases it, never later than
`scaleToZeroIdleSeconds`."""

from __future__ import annotations

from typing import Any

from accordion.operator.api import InferenceService, parse_resource
from accordion.operator.control.idle import IdleTracker, idle_period_s

KEY = "ns/svc"


def service(**spec: Any) -> InferenceService:
    obj = {
        "apiVersion": "accordion.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "svc", "namespace": "ns"},
        "spec": {
            "slo": {"latencyMs": 100},
            "demand": {"source": "Prometheus"},
            "variants": [
                {
                    "name": "v",
                    "accuracy": 80,
                    "model": {"storageUri": "builtin:demo-xs"},
                    "profiles": [{"pool": "gpu", "batches": [{"batchSize": 1, "p50Ms": 5}]}],
                }
            ],
            "minReplicas": 0,
            **spec,
        },
    }
    svc = parse_resource(obj, "svc")
    assert isinstance(svc, InferenceService)
    return svc


def idle_after(svc: InferenceService, rate: float, cold_start: float | None) -> list[float]:
    """Silences (seconds after the last request, at `rate` then) at which the service is idle,
    among 1..120 s."""
    out = []
    for silence in range(1, 121):
        tracker = IdleTracker()
        services = {KEY: svc}
        cold = {KEY: cold_start} if cold_start is not None else None
        tracker.update(services, {KEY: rate}, {KEY: 100.0}, 100.0, cold)
        if KEY in tracker.update(services, {KEY: 0.0}, {KEY: 100.0}, 100.0 + silence, cold):
            out.append(float(silence))
    return out


def test_busy_traffic_that_stops_releases_after_a_few_cold_starts() -> None:
    svc = service(scaleToZeroIdleSeconds=90)
    # 30 req/s, a measured cold start of 3 s: a silence of 3 cold starts (9 s) releases it.
    assert idle_after(svc, 30.0, 3.0)[0] == 9.0
    # Before a cold start was measured: the assumed one (10 s), 30 s.
    assert idle_after(svc, 30.0, None)[0] == 30.0


def test_a_silence_the_traffic_itself_makes_keeps_the_replica() -> None:
    svc = service(scaleToZeroIdleSeconds=90)
    # 0.2 req/s: gaps of 5 s are its traffic; a silence of 35 s (7 mean gaps) is not.
    assert idle_after(svc, 0.2, 3.0)[0] == 35.0
    assert idle_period_s(90.0, 3.0, 0.2) > 34.0


def test_never_later_than_the_spec_says() -> None:
    # 0.01 req/s would wait 690 s; the spec's 60 s bounds it, as before.
    assert idle_after(service(scaleToZeroIdleSeconds=60), 0.01, 3.0)[0] == 60.0
    # And a rate not known (no estimate when the last request came): the spec's.
    assert idle_period_s(60.0, 3.0, None) == 60.0
    assert idle_period_s(60.0, 3.0, 0.0) == 60.0


def test_a_service_that_began_warm_takes_the_other_services_cold_starts() -> None:
    """No cold start of its own yet: the median of the others' (3 s here, so 9 s of silence),
    not the 10 s assumed while no service has measured one (30 s)."""
    svc = service(scaleToZeroIdleSeconds=90)
    services = {KEY: svc}
    others = {"ns/a": 2.0, "ns/b": 3.0, "ns/c": 30.0}
    tracker = IdleTracker()
    tracker.update(services, {KEY: 30.0}, {KEY: 100.0}, 100.0, others)
    assert KEY not in tracker.update(services, {KEY: 0.0}, {KEY: 100.0}, 108.0, others)
    assert KEY in tracker.update(services, {KEY: 0.0}, {KEY: 100.0}, 109.0, others)
    # Its own measurement, once there, is its own.
    own = {**others, KEY: 5.0}
    assert KEY not in tracker.update(services, {KEY: 0.0}, {KEY: 100.0}, 114.0, own)
    assert KEY in tracker.update(services, {KEY: 0.0}, {KEY: 100.0}, 115.0, own)


def sessions(
    tracker: IdleTracker, svc: InferenceService, starts: list[float], until: float
) -> dict[float, bool]:
    """Sessions of 60 s at 30 req/s starting at `starts`, seen every second until `until`
    (a cold start of 2 s measured); per second, whether the service is idle."""
    services, cold = {KEY: svc}, {KEY: 2.0}
    last: float | None = None
    out = {}
    for t in range(int(until)):
        now = float(t)
        busy = any(s <= now < s + 60.0 for s in starts)
        if busy:
            last = now
        arrivals = {KEY: last} if last is not None else {}
        out[now] = KEY in tracker.update(
            services, {KEY: 30.0 if busy else 0.0}, arrivals, now, cold
        )
    return out


def test_regular_off_periods_prewarm_ahead_of_the_return() -> None:
    """Sessions every 300 s: after one off period (241 s, last to first arrival) the next
    session's replica is started two cold starts (4 s) before it, not at its first request
    (which would lose a cold start's requests), and the service is idle between."""
    svc = service(scaleToZeroIdleSeconds=90)
    tracker = IdleTracker()
    idle = sessions(tracker, svc, [0.0, 300.0, 600.0], 700.0)
    # The first off period is not known yet: idle until the session's first request.
    assert idle[299.0]
    assert not idle[300.0]
    # The second: idle through most of it, warm from 4 s before the expected return.
    assert idle[500.0]
    assert idle[594.0]
    assert not idle[596.0]
    assert not idle[599.0]
    assert list(tracker.off_periods_s[KEY]) == [241.0, 241.0]
    # One pre-warm, and the traffic came back within it.
    assert tracker.prewarms == {KEY: 1}
    assert tracker.prewarms_met == {KEY: 1}


def test_a_prewarm_that_misses_releases_and_irregular_silences_never_prewarm() -> None:
    svc = service(scaleToZeroIdleSeconds=90)
    tracker = IdleTracker()
    # One off period of 241 s, then the traffic does not come back on time: pre-warmed from
    # 596 s, released again once the window (241 s plus the 6-s idle period) has passed.
    idle = sessions(tracker, svc, [0.0, 300.0, 800.0], 1200.0)
    assert not idle[598.0]
    assert not idle[605.0]
    assert idle[607.0]
    assert idle[790.0]
    # That session came 441 s after the last: the off periods now disagree by far more than a
    # cold start, so the next return (at 241 s again) is not pre-warmed.
    assert list(tracker.off_periods_s[KEY]) == [241.0, 441.0]
    assert tracker.prewarms == {KEY: 1}  # counted, and not met: released unused
    assert tracker.prewarms_met.get(KEY, 0) == 0
    assert idle[1095.0]
    assert idle[1099.0]
