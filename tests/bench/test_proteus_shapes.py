"""The held-out shapes of the Proteus bench: the rate files say what their docstring says, the
committed files are the generator's, and the report names a policy that beats ours."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.proteus import shapes, workloads

MIX = {"bert": 0.1, "resnet": 0.05, "mobilenet": 0.5, "yolo": 0.35}


def rate_at(lines: list[str], t: float, family: str | None = None) -> float:
    """The rate a rate file gives at `t` (summed over families unless one is named)."""
    total = 0.0
    for line in lines:
        if line.startswith("#"):
            continue
        name, t0, t1, q0, q1 = line.split(",")
        if (family is None or name == family) and float(t0) <= t < float(t1):
            w = (t - float(t0)) / (float(t1) - float(t0))
            total += float(q0) + w * (float(q1) - float(q0))
    return total


def test_each_shape_has_the_rates_its_docstring_gives() -> None:
    steps = shapes_lines("steps")
    assert rate_at(steps, 50) == pytest.approx(900, rel=1e-3)
    assert rate_at(steps, 150) == pytest.approx(100, rel=1e-3)
    assert rate_at(steps, 100.5) == pytest.approx(500, rel=1e-3)  # within a second
    assert rate_at(steps, 250) == pytest.approx(900, rel=1e-3)

    flash = shapes_lines("flash-one")
    for family in MIX:
        resnet_x = 10 if family == "resnet" else 1
        bert_x = 10 if family == "bert" else 1
        base = 400 * MIX[family]
        assert rate_at(flash, 30, family) == pytest.approx(base, rel=1e-3)
        assert rate_at(flash, 90, family) == pytest.approx(base * resnet_x, rel=1e-3)
        assert rate_at(flash, 210, family) == pytest.approx(base * bert_x, rel=1e-3)

    shift = shapes_lines("mixshift")
    for t in (50, 150, 250):
        assert rate_at(shift, t) == pytest.approx(700, rel=1e-3)
    # The least requested family ends with the most requested one's share, and so on.
    assert rate_at(shift, 250, "resnet") == pytest.approx(700 * 0.5, rel=1e-3)
    assert rate_at(shift, 250, "mobilenet") == pytest.approx(700 * 0.05, rel=1e-3)
    assert rate_at(shift, 250, "bert") == pytest.approx(700 * 0.35, rel=1e-3)

    saw = shapes_lines("sawtooth")
    assert rate_at(saw, 0) == pytest.approx(200, rel=1e-3)
    assert rate_at(saw, 23.9) > 850
    assert rate_at(saw, 25.0) == pytest.approx(200, rel=1e-3)
    assert rate_at(saw, 37.5) == pytest.approx(550, rel=1e-2)

    diurnal = shapes_lines("diurnal")
    assert rate_at(diurnal, 0) == pytest.approx(200, rel=1e-3)
    assert rate_at(diurnal, 75) == pytest.approx(1000, rel=1e-3)
    assert rate_at(diurnal, 150) == pytest.approx(200, rel=1e-3)

    spikes = shapes_lines("spikes")
    assert rate_at(spikes, 5) == pytest.approx(300, rel=1e-3)
    for start in (10, 30, 290):  # 1,200 req/s for 3 s every 20 s, each change in half a second
        assert rate_at(spikes, start - 0.1) == pytest.approx(300, rel=1e-3)
        assert rate_at(spikes, start + 0.25) == pytest.approx(750, rel=1e-3)
        assert rate_at(spikes, start + 0.5) == pytest.approx(1200, rel=1e-3)
        assert rate_at(spikes, start + 3.4) == pytest.approx(1200, rel=1e-3)
        assert rate_at(spikes, start + 4.0) == pytest.approx(300, rel=1e-3)
    assert rate_at(spikes, 20) == pytest.approx(300, rel=1e-3)


def shapes_lines(name: str) -> list[str]:
    return workloads.shape_lines(name, MIX)


@pytest.mark.skipif(not workloads.DATA.exists(), reason="../shared/data/proteus is missing")
def test_committed_shape_files_are_the_generators() -> None:
    from accordion.sim.workload import read_proteus_trace

    mix = workloads.family_mix(read_proteus_trace(workloads.DATA / "traces/zipf_exponential/300"))
    for name in workloads.SHAPE_FUNCTIONS:
        committed = (workloads.SHAPES / f"{name}.rates").read_text()
        assert committed == "\n".join(workloads.shape_lines(name, mix)) + "\n", name


def cell(trace: str, policy: str, seed: int, violations: float, accuracy: float) -> shapes.Cell:
    return shapes.Cell(trace, policy, seed, violations, accuracy)


def test_report_names_a_policy_with_fewer_violations_at_no_less_accuracy() -> None:
    cells = [
        cell(trace, policy, seed, v, a)
        for trace in ("a.rates", *shapes.GOAL_TRACES)
        for seed in shapes.SEEDS
        for policy, v, a in (
            ("oracle", 0.0, 99.6),
            ("accordion", 0.010 + 0.001 * seed, 99.5),
            ("hardware-only", 0.005, 99.5),  # fewer violations, the same accuracy: beats ours
            ("clipper-ht", 0.001, 81.0),  # fewer violations, far less accuracy: does not
            ("proteus", 0.05, 99.6),
        )
    ] + [
        cell("a.rates", p, s, 0.2, 99.0)
        for p in shapes.POLICIES
        if p not in ("accordion", "hardware-only", "clipper-ht", "proteus")
        for s in shapes.SEEDS
    ]
    assert shapes.dominated_by(cells, "a.rates") == ["hardware-only"]
    text = shapes.report(cells, started=0.0)
    assert "Fewer violations than ours at the same accuracy or more: hardware-only." in text
    assert "| accordion | 1.000% / 1.100% / 1.200% | 1.100% | 99.50 (99.50-99.50) |" in text
    assert "| bursty.rates (ours) |" in text
    assert "| overload.rates (oracle bound) |" in text


def test_every_job_reads_a_committed_rate_file() -> None:
    todo = shapes.jobs()
    assert {t for t, _, _ in todo} >= {f"{n}.rates" for n in workloads.SHAPE_FUNCTIONS}
    for trace, _, _ in todo:
        assert shapes.trace_path(trace).is_file(), trace
    # ours on overload, the longest, first: two processes end together
    assert todo[0][:2] == ("overload.rates", "accordion")
