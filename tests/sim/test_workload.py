"""Trace readers (Proteus's format on the shared files, our rate format) and the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from accordion.sim.workload import load_proteus_cluster, read_proteus_trace, read_rate_trace


def test_proteus_trace_on_the_shared_files(proteus_data: Path) -> None:
    w = read_proteus_trace(proteus_data / "traces" / "zipf_exponential" / "300")
    assert len(w.families) == 9
    assert "mobilenet" in w.families
    assert len(w) == 75253
    assert w.arrival_s == sorted(w.arrival_s)
    assert all(abs(d - a - 0.3) < 1e-9 for a, d in zip(w.arrival_s, w.deadline_s, strict=True))
    assert 285 < w.duration_s < 295
    mobilenet = w.families.index("mobilenet")
    assert sum(1 for f in w.family if f == mobilenet) == 26753


def test_proteus_trace_format_and_directory_slo(tmp_path: Path) -> None:
    d = tmp_path / "250"
    d.mkdir()
    (d / "a.txt").write_text("10,1,300\n5,1\n")
    (d / "b.txt").write_text("7,1,100\n\n")
    w = read_proteus_trace(d)
    assert w.families == ["a", "b"]
    assert w.arrival_s == [0.005, 0.007, 0.010]
    assert w.family == [0, 1, 0]
    assert w.deadline_s == pytest.approx([0.255, 0.107, 0.310])
    (d / "a.txt").write_text("x,1,300\n")
    with pytest.raises(ValueError, match=r"a\.txt:1"):
        read_proteus_trace(d)


def test_rate_format_uniform_poisson_and_ramp(tmp_path: Path) -> None:
    p = tmp_path / "rates.txt"
    p.write_text(
        "# service,start,end,rate[,end_rate[,process]]\n"
        "a,0,10,20,,uniform\n"
        "b,0,100,5\n"
        "c,0,10,0,40,uniform\n"
    )
    slo = {"a": 0.1, "b": 0.2, "c": 0.3}
    w = read_rate_trace(p, slo, seed=1)
    counts = {n: sum(1 for f in w.family if w.families[f] == n) for n in w.families}
    assert counts["a"] == pytest.approx(200, abs=1)
    assert 400 < counts["b"] < 600  # Poisson at 5 QPS for 100 s
    assert counts["c"] == pytest.approx(200, abs=2)  # ramp 0 -> 40 over 10 s
    c = w.families.index("c")
    late_half = sum(1 for a, f in zip(w.arrival_s, w.family, strict=True) if f == c and a >= 5)
    assert late_half > 2.5 * (counts["c"] - late_half)  # the ramp puts 3/4 in the second half
    assert read_rate_trace(p, slo, seed=1).arrival_s == w.arrival_s
    p.write_text("z,0,10,1\n")
    with pytest.raises(ValueError, match="unknown service"):
        read_rate_trace(p, slo)


def test_proteus_cluster(proteus_data: Path) -> None:
    c = load_proteus_cluster(proteus_data)
    assert [p.name for p in c.pools] == ["cpu", "vpu", "gpu-ampere", "gpu-pascal"]
    assert sum(p.devices for p in c.pools) == 40
    assert len(c.families) == 9
    resnet = next(f for f in c.families if f.name == "resnet")
    r152 = resnet.variant("resnet152_v1")
    assert r152.accuracy == 100.0
    assert r152.profiles["vpu"] == r152.profiles["cpu"]  # VPUs run the CPU profile
    assert {p.batch_size for p in r152.profiles["gpu-ampere"]} == {1, 2, 4, 8}
    assert c.scaled(10).pools[0].devices == 100
