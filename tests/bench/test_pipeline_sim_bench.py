"""The pipelines bench's simulator scenario (bench/pipelines/sim.py): it reads back the parts
run.py measured, and on its low-class-rich cluster a variant that fits the SLO on no low-class
pool is served more within the SLO with pipelines on, with the low-class pools at work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from accordion.sim.workload import Family, load_proteus_cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.pipelines import run, sim


def test_parts_read_back_from_the_results_file() -> None:
    measured = sim.measured_from((run.RESULTS / "pipelines.md").read_text())
    names = [p.name for p in measured.parts]
    assert names[0] == "stem"
    assert names[-1] == "head"
    assert "layer1.0" in names
    assert all(p.output_bytes > 0 for p in measured.parts)
    assert sorted(measured.whole_ms) == list(run.SIZES)


def test_pipelines_on_serve_more_within_slo_in_the_simulator() -> None:
    if not (run.DATA / "aggregate_profiled.csv").exists():
        pytest.skip("../shared/data/proteus is not available")
    measured = sim.measured_from((run.RESULTS / "pipelines.md").read_text())
    cluster = load_proteus_cluster(run.DATA, devices_per_pool=1)
    base = next(v for f in cluster.families for v in f.variants if v.name == "resnet152_v1")
    variant = run.with_stages(base, measured)
    off = sim.simulate(variant, 500.0, 5.0, 1, "p90", 0)
    on = sim.simulate(variant, 500.0, 5.0, 2, "p90", 0)
    assert off.low_busy == 0.0  # whole resnet152 fits the SLO on the GPUs only
    assert on.low_busy > 0.1
    assert on.ok > 1.2 * off.ok
    assert any("stem.." in row for row in on.pipeline_rows)


def test_the_family_at_an_accuracy_floor_serves_more_at_that_accuracy() -> None:
    """The scenario a user runs: one service over the whole resnet family with an accuracy
    floor (resnet101's), more demand than whole placement serves there. Both runs keep to the
    floor (the planner would serve far more with resnet18 without it), and pipelines on serve
    more within the SLO at it."""
    if not (run.DATA / "aggregate_profiled.csv").exists():
        pytest.skip("../shared/data/proteus is not available")
    measured = sim.measured_from((run.RESULTS / "pipelines.md").read_text())
    cluster = load_proteus_cluster(run.DATA, devices_per_pool=1)
    base = next(f for f in cluster.families if f.name == "resnet")
    resnet = Family(
        name="resnet",
        slo_s=run.SLO_S,
        variants=tuple(run.with_stages(v, measured) for v in base.variants),
    )
    floor = resnet.variant("resnet101_v1").accuracy
    off, on = (
        sim.simulate_families((resnet,), {"resnet": 500.0}, 5.0, st, "p90", 0, {"resnet": floor})
        for st in (1, 2)
    )
    assert off.accuracy >= floor - 1e-9
    assert on.accuracy >= floor - 1e-9
    assert on.ok > 1.5 * off.ok
    assert on.low_busy > 0.1
    assert off.families["resnet"][1] == off.ok
