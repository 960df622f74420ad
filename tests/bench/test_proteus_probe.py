"""The probe of the Proteus bench: it reads the committed figures, plans the runs it is asked
for, runs a candidate patch in each run's own process, and reports changes and means."""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.proteus import probe, run, workloads
from bench.proteus.shapes import Cell


def test_the_committed_figures_are_read_from_both_reports() -> None:
    cells = probe.committed_cells()
    spikes = cells[("spikes.rates", 0)]
    assert 0 < spikes.violations < 0.1
    assert 90 < spikes.accuracy <= 100
    assert {("bursty.rates", s) for s in (0, 1, 2)} <= cells.keys()
    zipf = cells[("zipf-p50", -1)]  # summed from the per-second rows: as proteus.md prints
    assert f"| accordion | {zipf.violations:.2%} |" in (run.RESULTS / "proteus.md").read_text()
    assert 99 < zipf.accuracy <= 100
    assert ("zipf-dist", -1) in cells
    assert ("normal-1.5x-p50", -1) in cells


def test_the_runs_are_the_named_traces_at_every_seed() -> None:
    jobs = probe.jobs(["spikes", "zipf-p50"], (0, 2), goals=False, overload=False, patch="p.py")
    assert jobs == [
        probe.Job("spikes.rates", 0, "p.py"),
        probe.Job("spikes.rates", 2, "p.py"),
        probe.Job("zipf-p50", None, "p.py"),
    ]
    every = probe.jobs(None, (0,), goals=False, overload=False, patch=None)
    traces = {j.trace for j in every}
    assert {"bursty.rates", "steps.rates", "spikes.rates"} <= traces
    assert not {"overload.rates", "zipf-p50"} & traces
    with_all = probe.jobs(None, (0,), goals=True, overload=True, patch=None)
    assert {"overload.rates", "zipf-p50", "zipf-dist", "normal-1.5x-p50"} <= {
        j.trace for j in with_all
    }
    with pytest.raises(SystemExit, match="unknown trace"):
        probe.jobs(["nope"], (0,), goals=False, overload=False, patch=None)


def test_the_report_gives_each_change_and_the_mean() -> None:
    committed = {
        ("a.rates", 0): Cell("a.rates", "accordion", 0, 0.010, 99.0),
        ("a.rates", 1): Cell("a.rates", "accordion", 1, 0.020, 99.2),
    }
    now = [
        Cell("a.rates", "accordion", 0, 0.012, 99.1),
        Cell("a.rates", "accordion", 1, 0.014, 99.2),
    ]
    text = probe.report(now, committed, "rule.py")
    assert "with rule.py" in text
    assert (
        "| a.rates | 0 | 1.000% at 99.00 | 1.200% at 99.10 | +0.200 points, accuracy +0.100 |"
        in text
    )
    assert (
        "| a.rates | 1 | 2.000% at 99.20 | 1.400% at 99.20 | -0.600 points, accuracy +0.000 |"
        in text
    )
    assert (
        "| a.rates | mean | 1.500% at 99.10 | 1.300% at 99.15 | -0.200 points, accuracy +0.050 |"
        in text
    )


@pytest.mark.skipif(not workloads.DATA.exists(), reason="../shared/data/proteus is missing")
def test_a_patch_runs_in_the_runs_own_process_before_its_simulation(tmp_path: Path) -> None:
    patch = tmp_path / "rule.py"
    patch.write_text(
        "from types import SimpleNamespace\n"
        "import bench.proteus.shapes as shapes\n"
        "def simulate(cluster, workload, policy, config):\n"
        "    n = len(workload.requests) if hasattr(workload, 'requests') else 1\n"
        "    return SimpleNamespace(summary=SimpleNamespace(violation_ratio=0.5, "
        "effective_accuracy=float(n > 0) * 42.0))\n"
        "shapes.simulate = simulate\n"
    )
    with ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1) as pool:
        cell = pool.submit(probe.run_job, probe.Job("spikes.rates", 1, str(patch))).result()
    assert cell == Cell("spikes.rates", "accordion", 1, 0.5, 42.0)
    from accordion.sim import engine
    from bench.proteus import shapes

    assert vars(shapes)["simulate"] is engine.simulate  # this process is untouched
