"""Accordion's planner: pick variants, place replicas on device pools and route load.

Pure: it takes a `Problem` and returns a `Plan`, and knows nothing of Kubernetes.
"""

from accordion.solver.plan import Exclusion, Plan, PlanRow, ServicePlan, SolverStats
from accordion.solver.planner import plan
from accordion.solver.problem import (
    Allocation,
    Burstiness,
    PlannerSettings,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
)

__all__ = [
    "Allocation",
    "Burstiness",
    "Exclusion",
    "Plan",
    "PlanRow",
    "PlannerSettings",
    "PoolSpec",
    "Problem",
    "ProfilePoint",
    "ServicePlan",
    "ServiceSpec",
    "SolverStats",
    "VariantSpec",
    "plan",
]
