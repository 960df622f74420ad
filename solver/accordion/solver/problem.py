"""The planner's input: device pools, services with their variants and profiles, and settings.

These models are the contract between the operator (which builds them from InferenceService and
DevicePool objects) and the planner (which knows nothing of Kubernetes). Every check that can be
made on the input alone is made here, so a bad spec fails at the edge with the path of the field
at fault instead of deep inside the solver.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from accordion.solver.cellular import SequenceLengths, derive_profiles
from accordion.solver.mig import GPU_MODELS, MigSpec, slice_pool

Percentile = Literal["p50", "p90", "p99"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProfilePoint(_Frozen):
    """Measured latency of one batch of `batch_size` requests on one device, in seconds."""

    batch_size: int = Field(ge=1)
    p50_s: float = Field(gt=0)
    p90_s: float | None = Field(default=None, gt=0)
    p99_s: float | None = Field(default=None, gt=0)

    def latency_s(self, percentile: Percentile) -> float:
        """The latency at `percentile`, or at the nearest lower percentile that was measured."""
        if percentile == "p99" and self.p99_s is not None:
            return self.p99_s
        if percentile in ("p99", "p90") and self.p90_s is not None:
            return self.p90_s
        return self.p50_s


def _well_formed(profiles: dict[str, list[ProfilePoint]]) -> dict[str, list[ProfilePoint]]:
    """Profiles per pool sorted by batch size; duplicate sizes or no batch 1 are refused."""
    for pool, points in profiles.items():
        sizes = [p.batch_size for p in points]
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"profiles.{pool}: duplicate batch sizes {sorted(sizes)}")
        if 1 not in sizes:
            raise ValueError(f"profiles.{pool}: the profile must contain batch size 1")
    ordered = sorted(profiles.items())
    return {pool: sorted(points, key=lambda p: p.batch_size) for pool, points in ordered}


class StageSpec(_Frozen):
    """One consecutive part of a variant's model, from one candidate cut point to the next.

    A variant's `stages` in order make up its whole model; the planner may cut it between any
    two of them into a pipeline whose stages run on different pools (`pipelines`).
    """

    name: str = Field(min_length=1)
    profiles: dict[str, list[ProfilePoint]] = Field(default_factory=dict)
    output_bytes: int = Field(
        default=0, ge=0, description="Size of the tensor this part hands on, per request."
    )

    _profiles_well_formed = field_validator("profiles")(_well_formed)


class VariantSpec(_Frozen):
    """One variant of a model family: its accuracy and its latency profile on each pool."""

    name: str = Field(min_length=1)
    accuracy: float = Field(ge=0, le=100)
    profiles: dict[str, list[ProfilePoint]] = Field(default_factory=dict)
    stages: list[StageSpec] = Field(
        default_factory=list,
        description="The model's parts between candidate cut points, in order, with their "
        "profiles per pool: the planner may also serve the variant as a pipeline of them. "
        "Empty (the default): whole variants only.",
    )
    step_profiles: dict[str, list[ProfilePoint]] = Field(
        default_factory=dict,
        description="A cell batched per step (cellular mode): the latency of one step per "
        "batch size on each pool; with `lengths`, its per-request `profiles` are derived from "
        "them (`accordion.solver.cellular`).",
    )
    lengths: SequenceLengths | None = Field(
        default=None, description="The workload's request lengths in steps (cellular mode)."
    )

    _profiles_well_formed = field_validator("profiles")(_well_formed)

    @model_validator(mode="before")
    @classmethod
    def _cellular_profiles(cls, data: object) -> object:
        """A cellular variant's per-request profiles, from its step profiles at its lengths."""
        if not isinstance(data, dict) or not data.get("step_profiles"):
            return data
        if data.get("lengths") is None:
            raise ValueError("step_profiles need lengths (the workload's request lengths)")
        lengths = SequenceLengths.model_validate(data["lengths"])
        steps = {
            pool: [ProfilePoint.model_validate(p) for p in points]
            for pool, points in data["step_profiles"].items()
        }
        return {**data, "profiles": {**derive_profiles(steps, lengths), **data.get("profiles", {})}}

    @field_validator("stages")
    @classmethod
    def _stages_distinct(cls, stages: list[StageSpec]) -> list[StageSpec]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: duplicate stage names {names}")
        if len(stages) == 1:
            raise ValueError("stages: a model cut into parts has at least 2")
        return stages


class PoolSpec(_Frozen):
    """A class of identical devices: how many the planner may use and what each costs."""

    name: str = Field(min_length=1)
    devices: int = Field(ge=0)
    cost_per_device: float = Field(default=1.0, ge=0)
    mig: MigSpec | None = Field(
        default=None,
        description="MIG-capable GPUs: the planner splits each into a layout of slices, and "
        "profiles name a slice sub-pool, `<pool>/<profile>` (see `mig`).",
    )

    @model_validator(mode="after")
    def _mig_current_fits(self) -> PoolSpec:
        if self.mig is not None and len(self.mig.current) > self.devices:
            raise ValueError(f"mig.current: {len(self.mig.current)} GPUs, more than {self.devices}")
        return self


class Burstiness(_Frozen):
    """How bursty a service's arrivals are, as its routers measure them: the index of
    dispersion (variance / mean) of arrival counts in windows of `window_s`, at `rate_qps`.
    Poisson arrivals have 1; `accordion.solver.queueing` sizes replicas from it."""

    dispersion: float = Field(ge=0, le=1e6)
    window_s: float = Field(default=0.1, gt=0, le=60)
    rate_qps: float = Field(gt=0, le=1e7)

    @property
    def rate_cv2(self) -> float:
        """Squared coefficient of variation of the arrival rate (D = 1 + rate * window * cv2
        for a Poisson stream whose rate varies slowly); 0 for Poisson or smoother."""
        return max(0.0, self.dispersion - 1.0) / (self.rate_qps * self.window_s)


class ServiceSpec(_Frozen):
    """One model family served behind one endpoint, with its SLO and accuracy bounds."""

    name: str = Field(min_length=1)
    demand_qps: float = Field(ge=0)
    slo_s: float = Field(gt=0)
    accuracy_floor: float = Field(default=0.0, ge=0, le=100)
    accuracy_target: float | None = Field(default=None, ge=0, le=100)
    priority: int = Field(default=1, ge=1)
    variants: list[VariantSpec] = Field(min_length=1)
    utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="This service's utilization margin, instead of the settings' (a service "
        "that the cluster cannot serve in full is planned at 1.0: no margin in overload).",
    )
    burstiness: Burstiness | None = Field(
        default=None,
        description="Measured arrival burstiness: capacity then comes from the batching model "
        "(`queueing`) instead of the utilization margin; None: the margin.",
    )
    min_replicas: int = Field(
        default=0,
        ge=0,
        description="Fewest replicas the plan gives the service, as far as free devices allow "
        "(`accordion.solver.bounds`).",
    )
    max_replicas: int | None = Field(
        default=None, ge=1, description="Most replicas the plan gives the service."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSpec:
        if self.accuracy_target is not None and self.accuracy_target < self.accuracy_floor:
            raise ValueError(
                f"accuracy_target: {self.accuracy_target} is below accuracy_floor "
                f"{self.accuracy_floor}"
            )
        names = [v.name for v in self.variants]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"variants: duplicate variant names {dups}")
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas: {self.max_replicas} is below min_replicas {self.min_replicas}"
            )
        return self


class Allocation(_Frozen):
    """Replicas of one (service, variant, pool) running now; the planner avoids needless change."""

    service: str
    variant: str
    pool: str
    replicas: int = Field(ge=0)
    pipeline: str | None = Field(
        default=None, description="The pipeline these replicas form (its plan row's id)."
    )


class PlannerSettings(_Frozen):
    """Knobs of the planner. Defaults suit a control loop that re-plans every few seconds."""

    time_limit_s: float = Field(default=10.0, gt=0)
    relative_gap: float = Field(default=0.001, ge=0, le=1)
    utilization: float = Field(default=0.9, gt=0, le=1)
    latency_percentile: Percentile = "p99"
    num_workers: int = Field(
        default=2,
        ge=1,
        description="Threads a solver may use. GLOP and SCIP, the solvers the planner uses now, "
        "run on one (a MILP stage stopped by the time limit is the planner's only dependence on "
        "the machine's speed).",
    )
    polish_time_s: float = Field(
        default=2.0,
        gt=0,
        description="How long the MILP may polish a rounded LP solution that misses "
        "relative_gap; the plan keeps the best solution found. Within time_limit_s. The "
        "backstop: a stage normally ends on the gap or on polish_nodes.",
    )
    polish_nodes: int = Field(
        default=100,
        ge=1,
        description="Branch-and-bound nodes each MILP stage may explore before it keeps its "
        "best solution: a stop on the solver's own work, so that the same problem gets the "
        "same plan on a fast or a loaded machine (a stop on the clock does not).",
    )
    accuracy_tolerance: float = Field(
        default=0.0005,
        ge=0,
        le=0.1,
        description="How much of the accuracy term (relative) a re-plan may give up to add "
        "fewer new replicas (each one costs a model load).",
    )
    fair_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="The first fair_share of every service's demand is served before the rest "
        "of anyone's (in overload no service that could be served in part gets nothing).",
    )
    pipeline_max_stages: int = Field(
        default=2,
        ge=1,
        le=4,
        description="Most stages a pipeline option may have (variants with `stages` only); "
        "1: whole variants only.",
    )
    transfer_bytes_per_s: float = Field(
        default=1.25e9,
        gt=0,
        description="Bandwidth between two pipeline stages (10 Gb/s).",
    )
    transfer_overhead_s: float = Field(
        default=0.0005,
        ge=0,
        description="Fixed cost of handing one batch to the next pipeline stage.",
    )


class Problem(_Frozen):
    """Everything the planner needs: pools, services, what runs now, and settings."""

    pools: list[PoolSpec]
    services: list[ServiceSpec]
    current: list[Allocation] = Field(default_factory=list)
    settings: PlannerSettings = Field(default_factory=PlannerSettings)

    @model_validator(mode="after")
    def _references_resolve(self) -> Problem:
        dups = sorted(n for n, k in Counter(p.name for p in self.pools).items() if k > 1)
        if dups:
            raise ValueError(f"pools: duplicate pool names {dups}")
        dups = sorted(n for n, k in Counter(s.name for s in self.services).items() if k > 1)
        if dups:
            raise ValueError(f"services: duplicate service names {dups}")
        # A MIG pool is used through its slice sub-pools only (`mig.slice_pool`).
        known = {p.name for p in self.pools if p.mig is None} | {
            slice_pool(p.name, profile)
            for p in self.pools
            if p.mig is not None
            for profile in GPU_MODELS[p.mig.gpu_model]
        }
        for i, svc in enumerate(self.services):
            for j, var in enumerate(svc.variants):
                for pool in var.profiles:
                    if pool not in known:
                        raise ValueError(
                            f"services[{i}].variants[{j}].profiles.{pool}: unknown pool"
                        )
                for k, stage in enumerate(var.stages):
                    for pool in sorted(set(stage.profiles) - known):
                        raise ValueError(
                            f"services[{i}].variants[{j}].stages[{k}].profiles.{pool}: unknown pool"
                        )
        variants = {(s.name, v.name) for s in self.services for v in s.variants}
        for k, alloc in enumerate(self.current):
            if alloc.pool not in known:
                raise ValueError(f"current[{k}].pool: unknown pool {alloc.pool!r}")
            if (alloc.service, alloc.variant) not in variants:
                raise ValueError(
                    f"current[{k}]: unknown service/variant {alloc.service}/{alloc.variant}"
                )
        return self
