"""The pipelines bench's simulator scenario (bench/pipelines/sim.py): it reads back the parts
run.py measured, and on its low-class-rich cluster a variant that fits the SLO on no low-class
pool is served more within the SLO with pipelines on, with the low-class pools at work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from accordion.sim.workload import load_proteus_cluster

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
