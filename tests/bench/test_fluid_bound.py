"""The batching bench's fluid bound: what no batching policy can beat on given arrivals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from accordion.workers.batching import Request, make_policy, replay
from accordion.workers.config import BatchingConfig
from bench.batching.policy_sim import Arrivals, fluid_limit, fluid_on_time


def test_fluid_server_skips_only_what_it_cannot_finish() -> None:
    # 10/s: each request takes 0.1 s. Five at t=0 with a 0.25 s SLO: the first two finish at
    # 0.1 and 0.2; the others would finish at 0.3 or later and are skipped. One at t=1.0 fits.
    assert fluid_on_time([0, 0, 0, 0, 0, 1.0], 10.0, 0.25) == pytest.approx(3 / 6)
    assert fluid_on_time([0.0, 0.1, 0.2, 0.3], 10.0, 0.1) == 1.0
    assert fluid_on_time([], 10.0, 0.1) == 1.0


@pytest.mark.parametrize("rate", [80.0, 99.0, 150.0])
@pytest.mark.parametrize("policy", ["triton", "slo"])
def test_no_policy_beats_the_fluid_bound(rate: float, policy: str) -> None:
    # A real batcher on a device whose peak is 100/s (a batch of b takes 20 ms + b / 100 s)
    # never finishes more in time than the fluid server at 100/s, below, near and over it.
    def latency_s(b: int) -> float:
        return 0.02 + b / 100

    arrivals = Arrivals("Poisson").schedule(rate, 10.0, seed=3)
    requests = [Request(i, t, t + 0.3) for i, t in enumerate(arrivals)]
    config = BatchingConfig(policy=policy, max_batch_size=64, max_queue_delay_ms=1.0)
    profile = {b: latency_s(b) for b in (1, 8, 64)}
    outcome = replay(make_policy(config, profile, 0.3), requests, latency_s)
    assert outcome.attainment <= fluid_on_time(arrivals, 100.0, 0.3)
    if rate == 80.0:  # well inside what both policies sustain
        assert outcome.attainment > 0.5


def test_fluid_limit_is_the_rate_where_the_bound_reaches_99_percent() -> None:
    poisson = Arrivals("Poisson")
    limit = fluid_limit(poisson, 100.0, 0.3, 10.0)
    assert 90.0 < limit <= 100.0 / 0.99
    assert fluid_on_time(poisson.schedule(limit, 10.0, 1), 100.0, 0.3) >= 0.99
    assert fluid_on_time(poisson.schedule(limit * 1.05, 10.0, 1), 100.0, 0.3) < 0.99
