"""Trace-driven discrete-event simulator: the real planner and batchers on simulated time.

`accordion.sim` drives the same planner (`accordion.solver.planner.plan`), the same batching
policy objects (`accordion.workers.batching`) and the same demand estimator
(`accordion.operator.control.demand`) as the operator and the worker pods, on a simulated
cluster of device pools, against recorded or synthetic traces. Nothing imports it.
"""

from accordion.sim.engine import SimConfig, SimResult, Simulator, simulate
from accordion.sim.metrics import Summary
from accordion.sim.workload import (
    Cluster,
    Family,
    Workload,
    load_proteus_cluster,
    read_proteus_trace,
    read_rate_trace,
)

__all__ = [
    "Cluster",
    "Family",
    "SimConfig",
    "SimResult",
    "Simulator",
    "Summary",
    "Workload",
    "load_proteus_cluster",
    "read_proteus_trace",
    "read_rate_trace",
    "simulate",
]
