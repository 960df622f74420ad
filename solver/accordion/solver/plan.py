"""The planner's output: replicas per (service, variant, pool), routing, and what it achieves.

The operator turns rows into Deployments and routing weights, and reports the per-service
summary in the InferenceService status; the solver statistics make a slow or poor solve visible.
Lists are sorted so that equal plans compare (and serialize) equal.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PlanStage(_Frozen):
    """One stage of a pipeline row: parts `first`..`last` of the variant's model on a pool."""

    pool: str
    first: str
    last: str
    replicas: int = Field(ge=0, description="Devices of the pool this stage takes in all.")
    devices_per_replica: int = Field(ge=1)
    max_batch_size: int = Field(ge=1)
    latency_s: float = Field(ge=0, description="Latency of a batch of max_batch_size.")
    output_bytes: int = Field(ge=0, description="Per request, handed to the next stage.")


class PlanRow(_Frozen):
    """Replicas of one variant on one pool, their batch-size cap and the load routed to them."""

    service: str
    variant: str
    pool: str
    replicas: int = Field(ge=0)
    max_batch_size: int = Field(ge=1)
    capacity_qps_per_replica: float = Field(ge=0)
    capacity_qps: float = Field(ge=0)
    routed_qps: float = Field(ge=0)
    accuracy: float
    spare_replicas: int = Field(
        default=0,
        ge=0,
        description="Of `replicas`, how many are spare (burst) replicas on devices the plan "
        "left idle: in `capacity_qps`, but no load is routed to them by weight.",
    )
    pipeline: str | None = Field(
        default=None,
        description="For a pipeline (the variant cut into stages on several pools), its id; "
        "`pool` is then its first stage's pool. None for a whole variant.",
    )
    stages: list[PlanStage] = Field(
        default_factory=list, description="A pipeline's stages in order; empty otherwise."
    )


class ServicePlan(_Frozen):
    """What the plan achieves for one service."""

    service: str
    demand_qps: float
    served_qps: float
    unserved_qps: float
    capacity_qps: float
    effective_accuracy: float | None = Field(
        description="Demand-weighted accuracy of the served requests; None when none is served."
    )
    floor_met: bool = Field(
        description="True when the service has an eligible variant (accuracy at or above its "
        "floor) and all of its demand is served."
    )
    spare_capacity_qps: float = Field(
        default=0.0, ge=0, description="Capacity of spare (burst) replicas, beyond capacity_qps."
    )


class Exclusion(_Frozen):
    """A (variant, pool) pair the planner cannot use, and why."""

    service: str
    variant: str
    pool: str
    reason: str


class SolverStats(_Frozen):
    """How the solve went: status, time, objective terms, and the proven optimality gap."""

    status: str
    solver: str
    solve_time_s: float
    served_qps: float = Field(description="Priority-weighted served demand (objective term 1).")
    accuracy_term: float = Field(
        description="Sum over services of served QPS times min(accuracy, target) (term 2)."
    )
    cost: float = Field(description="Device cost of the plan (term 3).")
    change: int = Field(description="Replicas added or removed against the current plan (term 4).")
    gap: float = Field(description="Relative gap of the accuracy stage against its LP bound.")
    gain_over_current_qps: float | None = Field(
        default=None,
        description="How much more this plan serves than the current allocation "
        "(`Problem.current`) would, routed for the same demand: priority-weighted, a shortfall "
        "of a service's fair share counting as in objective term 1 (`model.FAIR_WEIGHT` "
        "times). None without a current allocation, or when it no longer fits the pools. A "
        "control loop weighs it against what the plan's model swaps cost (the operator's "
        "`control/swaps.py`).",
    )


class SlicePlacement(_Frozen):
    """One MIG instance of a GPU's layout: its profile and the memory slice it starts at."""

    profile: str
    start: int = Field(ge=0)


class GpuLayout(_Frozen):
    """The MIG layout the plan gives one GPU of a MIG pool (see `mig`)."""

    pool: str
    gpu: int = Field(ge=0, description="The GPU's index in its pool.")
    layout: str = Field(description="The layout's name, e.g. 1x3g.40gb_2x2g.20gb.")
    slices: list[SlicePlacement]


class Plan(_Frozen):
    """A complete plan: rows, per-service summaries, excluded pairs, and solver statistics."""

    rows: list[PlanRow] = Field(default_factory=list)
    layouts: list[GpuLayout] = Field(
        default_factory=list,
        description="MIG pools only: the layout of every GPU the plan partitions; the rows "
        "of its slices name the sub-pool `<pool>/<profile>`.",
    )
    services: list[ServicePlan] = Field(default_factory=list)
    excluded: list[Exclusion] = Field(default_factory=list)
    stats: SolverStats
