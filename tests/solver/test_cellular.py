"""A cellular variant's per-request profile from its step profile at the workload's lengths
(`accordion.solver.cellular`), as the planner's `VariantSpec` derives it, and the same rule as
the workers' profiler (`accordion profile --stages --lengths`)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from accordion.solver import VariantSpec
from accordion.solver.cellular import SequenceLengths, equivalent_profile
from accordion.solver.problem import ProfilePoint
from accordion.workers.profiler import BatchProfile, equivalent_request_profile

STEP = [
    ProfilePoint(batch_size=1, p50_s=0.0002, p90_s=0.0003, p99_s=0.0004),
    ProfilePoint(batch_size=8, p50_s=0.0005, p90_s=0.0006, p99_s=0.0007),
    ProfilePoint(batch_size=32, p50_s=0.0008, p90_s=0.0009, p99_s=0.001),
]


def test_the_tail_sets_the_steps_counted_when_it_dominates() -> None:
    assert SequenceLengths(mean_steps=73, tail_steps=517).factor == 259
    assert SequenceLengths(mean_steps=60, tail_steps=100).factor == 60
    out = equivalent_profile(STEP, SequenceLengths(mean_steps=73, tail_steps=517))
    assert [p.batch_size for p in out] == [1, 8, 32]
    assert out[2].p50_s == pytest.approx(0.0008 * 259)
    assert out[2].p99_s == pytest.approx(0.001 * 259)
    assert out[0].p90_s == pytest.approx(0.0003 * 259)


def test_the_same_rule_as_the_workers_profiler() -> None:
    rng = np.random.default_rng(1)
    lengths = [int(x) for x in np.clip(rng.lognormal(np.log(40), 1.1, 500), 2, 768)]
    mean = float(np.mean(lengths))
    tail = float(np.quantile(np.asarray(lengths, dtype=float), 0.99))
    ours = equivalent_profile(STEP, SequenceLengths(mean_steps=mean, tail_steps=tail))
    step_ms = [
        BatchProfile(p.batch_size, p.p50_s * 1e3, (p.p90_s or 0) * 1e3, (p.p99_s or 0) * 1e3)
        for p in STEP
    ]
    theirs = equivalent_request_profile(step_ms, lengths)
    for a, b in zip(ours, theirs, strict=True):
        assert a.p50_s * 1e3 == pytest.approx(b.p50_ms, abs=1e-3)
        assert (a.p99_s or 0) * 1e3 == pytest.approx(b.p99_ms, abs=1e-3)


def test_a_variant_with_step_profiles_plans_with_the_derived_profiles() -> None:
    v = VariantSpec(
        name="gru",
        accuracy=80,
        step_profiles={"cpu": STEP},
        lengths=SequenceLengths(mean_steps=50, tail_steps=300),
    )
    assert v.profiles["cpu"][1].p50_s == pytest.approx(0.0005 * 150.5)
    assert VariantSpec.model_validate_json(v.model_dump_json()) == v


def test_step_profiles_need_lengths_and_a_tail_above_the_mean() -> None:
    with pytest.raises(ValidationError, match="step_profiles need lengths"):
        VariantSpec(name="gru", accuracy=80, step_profiles={"cpu": STEP})
    with pytest.raises(ValidationError, match="must be at least mean_steps"):
        SequenceLengths(mean_steps=50, tail_steps=10)
