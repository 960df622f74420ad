"""Profiles of staged models for the planner: the equivalent per-request profile of a cell at
a length distribution is safe (the planner's capacity at its SLO rule is served by the cellular
scheduler within the SLO), and `accordion profile --stages` prints it."""

from __future__ import annotations

import random

import numpy as np
import yaml
from typer.testing import CliRunner

from accordion.workers.cellular import CellularScheduler
from accordion.workers.cli import app
from accordion.workers.profiler import (
    BatchProfile,
    equivalent_request_profile,
    summed_stage_profile,
)
from accordion.workers.staged import Job, StageLatency, replay_staged


def step_ms(b: int) -> float:
    return 1.0 + 0.05 * (b - 1)


def test_equivalent_profile_counts_the_tail_and_never_overstates_throughput() -> None:
    lengths = [10] * 90 + [100] * 10
    step = [BatchProfile(b, step_ms(b), step_ms(b), step_ms(b)) for b in (1, 8, 16)]
    profile = equivalent_request_profile(step, lengths)
    tail = float(np.quantile(lengths, 0.99))
    for s, p in zip(step, profile, strict=True):
        assert 2 * p.p99_ms >= (tail + 1) * s.p99_ms - 1e-6  # the tail request fits
        assert p.p50_ms >= np.mean(lengths) * s.p50_ms - 1e-6  # b / L(b): no more than served
        assert p.p50_ms == round(50.5 * s.p50_ms, 3)  # (100 + 1) / 2 > the mean, 19
    uniform = equivalent_request_profile(step, [20] * 50)
    assert uniform[0].p50_ms == 20 * step[0].p50_ms  # no tail: the mean length decides


def test_the_planners_capacity_from_the_equivalent_profile_is_served_within_the_slo() -> None:
    rng = np.random.default_rng(5)
    lengths = [int(x) for x in np.clip(np.round(rng.lognormal(np.log(24), 0.8, 4000)), 2, 192)]
    sizes = [1, 2, 4, 8, 16, 32]
    step = [BatchProfile(b, step_ms(b), step_ms(b), step_ms(b)) for b in sizes]
    slo_s = 0.25  # binding: the longest requests need most of it
    # The planner's rule (solver.capacity.batch_capacity): the largest b with 2 L(b) <= SLO.
    fitting = [p for p in equivalent_request_profile(step, lengths) if 2 * p.p99_ms / 1e3 <= slo_s]
    best = fitting[-1]
    capacity_qps = best.batch_size / (best.p99_ms / 1e3)
    scheduler = CellularScheduler(
        StageLatency([{b: step_ms(b) / 1e3 for b in sizes}]), max_batch_size=32
    )
    t, jobs, arrivals = 0.0, [], random.Random(2)
    for i, n in enumerate(lengths):
        t += arrivals.expovariate(capacity_qps)
        jobs.append(Job(i, t, t + slo_s, n))
    outcome = replay_staged(scheduler, jobs, lambda _k, b: step_ms(b) / 1e3)
    assert outcome.attainment >= 0.99, (capacity_qps, outcome.attainment)


def test_summed_stage_profile_adds_the_stages() -> None:
    stages = [[BatchProfile(1, 1.0, 2.0, 3.0), BatchProfile(4, 2.0, 3.0, 4.0)]] * 3
    assert summed_stage_profile(stages) == [
        BatchProfile(1, 3.0, 6.0, 9.0),
        BatchProfile(4, 6.0, 9.0, 12.0),
    ]


def test_profile_command_prints_steps_and_the_equivalent_profile() -> None:
    result = CliRunner().invoke(
        app,
        [
            "profile",
            "--model",
            "builtin:gru-seq",
            "--batch-sizes",
            "1,4",
            "--stages",
            "--lengths",
            "5,10,40",
            "--repeats",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "# latency per step of the cell" in result.output
    assert "{batchSize: 4, p50Ms:" in result.output
    assert "# per request at lengths meanSteps 18.3, p99Steps 39.4" in result.output
    # without lengths: the step profile, for a variant with batching.lengths
    steps = CliRunner().invoke(
        app,
        ["profile", "--model", "builtin:gru-seq", "--batch-sizes", "1,4", "--stages"],
    )
    assert steps.exit_code == 0, steps.output
    assert "#   batching: {mode: Cellular, lengths:" in steps.output
    block = yaml.safe_load(steps.output)
    step_ms = {b["batchSize"]: b["p50Ms"] for b in block["profiles"][0]["batches"]}
    assert set(step_ms) == {1, 4}
    assert all(0 < ms < 50 for ms in step_ms.values())  # one GRU step, not a request
    cnn = CliRunner().invoke(
        app,
        [
            "profile",
            "--model",
            "builtin:cnn-deep",
            "--batch-sizes",
            "1,2",
            "--stages",
            "--repeats",
            "3",
        ],
    )
    assert cnn.exit_code == 0, cnn.output
    assert "#   stage 9:" in cnn.output
