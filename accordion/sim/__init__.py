"""Trace-driven discrete-event simulator: the real planner and batchers on simulated time.

`accordion.sim` drives the same planner (`accordion.solver.planner.plan`), the same batching
policy objects (`accordion.workers.batching`) and the same demand estimator
(`accordion.operator.control.demand`) as the operator and the worker pods, on a simulated
cluster of device pools, against recorded or synthetic traces. Nothing imports it.
"""

from accordion.sim.catalog import POLICIES, make_control_policy
from accordion.sim.engine import SimConfig, SimResult, Simulator, simulate
from accordion.sim.metrics import Summary
from accordion.sim.oracle import OracleBound, oracle_bound
from accordion.sim.policies import Accordion, Clipper, HardwareOnly, InfaasGreedy
from accordion.sim.policy import ControlPolicy, SimView, Target, TargetRow
from accordion.sim.proteus import Proteus, ProteusBatcher
from accordion.sim.workload import (
    Cluster,
    Family,
    Workload,
    load_proteus_cluster,
    read_proteus_trace,
    read_rate_trace,
)

__all__ = [
    "POLICIES",
    "Accordion",
    "Clipper",
    "Cluster",
    "ControlPolicy",
    "Family",
    "HardwareOnly",
    "InfaasGreedy",
    "OracleBound",
    "Proteus",
    "ProteusBatcher",
    "SimConfig",
    "SimResult",
    "SimView",
    "Simulator",
    "Summary",
    "Target",
    "TargetRow",
    "Workload",
    "load_proteus_cluster",
    "make_control_policy",
    "oracle_bound",
    "read_proteus_trace",
    "read_rate_trace",
    "simulate",
]
