"""A short slice of Proteus's trace on a small cluster: ours against the fixed-variant baselines.

20 seconds at the trace's peak on 16 devices (4 per pool): the most accurate variants cannot
keep up, the least accurate ones can but give away accuracy. Ours scales accuracy and must
have fewer violations than every fixed-variant baseline (Clipper-HA, Clipper-HT with AIMD, and
hardware-only), at a higher accuracy than Clipper-HT.
"""

from __future__ import annotations

from pathlib import Path

from accordion.sim.catalog import make_control_policy
from accordion.sim.engine import SimConfig, simulate
from accordion.sim.workload import load_proteus_cluster, read_proteus_trace


def test_ours_beats_fixed_variant_baselines_on_a_trace_slice(proteus_data: Path) -> None:
    cluster = load_proteus_cluster(proteus_data, devices_per_pool=4)
    trace = read_proteus_trace(proteus_data / "traces" / "zipf_exponential" / "300")
    workload = trace.sliced(80.0, 100.0)
    assert len(workload) > 10_000
    summaries = {
        name: simulate(cluster, workload, make_control_policy(name), SimConfig()).summary
        for name in ("accordion", "clipper-ha", "clipper-ht", "hardware-only")
    }
    ours = summaries["accordion"]
    for name in ("clipper-ha", "clipper-ht", "hardware-only"):
        assert ours.violation_ratio < summaries[name].violation_ratio, (name, summaries)
    assert ours.effective_accuracy > summaries["clipper-ht"].effective_accuracy + 3
    assert ours.ok + ours.late + ours.dropped == len(workload)
