"""A short slice of Proteus's trace on a small cluster: ours against the fixed-variant baselines.

20 seconds at the trace's peak on 16 devices (4 per pool), devices exclusive (a replica that
replaces another loads only once the old one has freed its device): the most accurate variants
cannot keep up, the least accurate ones can but give away accuracy. Ours scales accuracy: far
fewer violations than the accurate fixed variants (Clipper-HA, hardware-only), and against the
fastest fixed variant (Clipper-HT) more accuracy for at most a point and a half more
violations (the model loads of accuracy scaling, starting cold at the peak; seen: ours 5.1% at
86.7, Clipper-HT 4.4% at 81.1, hardware-only 22.9%, Clipper-HA 40.5%).
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
    for name in ("clipper-ha", "hardware-only"):
        assert ours.violation_ratio < summaries[name].violation_ratio / 3, (name, summaries)
    fastest = summaries["clipper-ht"]
    assert ours.violation_ratio < fastest.violation_ratio + 0.015, summaries
    assert ours.effective_accuracy > fastest.effective_accuracy + 3
    assert ours.ok + ours.late + ours.dropped == len(workload)
