"""The fast loop beats weights-only routing in a burst (simulation of the pods' own objects)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_sim() -> ModuleType:
    path = ROOT / "bench" / "batching" / "fastloop_sim.py"
    spec = importlib.util.spec_from_file_location("fastloop_sim", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fastloop_sim"] = module
    spec.loader.exec_module(module)
    return module


def test_fast_loop_serves_the_burst_weights_only_cannot() -> None:
    sim = load_sim()
    weights_only = sim.simulate(False, sim.burst, 6.0, seed=3)
    fast = sim.simulate(True, sim.burst, 6.0, seed=3)
    assert weights_only.attainment < 0.97
    assert fast.attainment >= 0.99
    assert fast.effective_accuracy > weights_only.effective_accuracy
    # Without a burst, the fast loop mostly keeps to the plan: the answered requests' mean
    # accuracy stays close to the plan's, and nothing is lost to Poisson fluctuations.
    calm = sim.simulate(True, lambda t: 300.0, 4.0, seed=3)
    plan = sim.simulate(False, lambda t: 300.0, 4.0, seed=3)
    assert calm.attainment >= 0.99
    assert abs(calm.accuracy_sum / calm.ok - plan.accuracy_sum / plan.ok) < 0.02
    # The relief shift may move a few requests to `small` before `big` is truly full: a
    # tenth of a point of accuracy at most.
    assert calm.effective_accuracy >= plan.effective_accuracy - 0.001


def test_capacity_correction_serves_a_backend_slower_than_its_profile() -> None:
    sim = load_sim()
    kwargs = {"big_slowdown": 1.4, "planned_batches": True}
    trusting = sim.simulate(True, sim.burst, 6.0, seed=3, correct_capacity=False, **kwargs)
    corrected = sim.simulate(True, sim.burst, 6.0, seed=3, **kwargs)
    # Trusting the plan, the router sends big what it then drops; corrected, it reroutes.
    assert corrected.dropped < trusting.dropped / 4
    assert corrected.attainment >= 0.95 > 0.85 > trusting.attainment
    # At the profiled speed the correction changes nothing.
    plain = sim.simulate(True, sim.burst, 6.0, seed=3, correct_capacity=False, planned_batches=True)
    same = sim.simulate(True, sim.burst, 6.0, seed=3, planned_batches=True)
    assert same == plain
    # Without the fast loop there is nowhere to reroute: what the slow backend may still serve
    # is sent, not shed (within a point of trusting the plan).
    only = sim.simulate(False, sim.burst, 6.0, seed=3, **kwargs)
    only_trusting = sim.simulate(False, sim.burst, 6.0, seed=3, correct_capacity=False, **kwargs)
    assert only.attainment >= only_trusting.attainment - 0.01
