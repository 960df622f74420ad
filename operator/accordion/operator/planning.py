"""Translate the API objects into the planner's `Problem`, and its `Plan` back into status rows.

This is the only place where the Kubernetes-facing API (milliseconds, camelCase, pools as
objects) meets the planner's pure model (seconds, names, numbers). The operator, the CLI and
local mode all build their problems here, so the same manifests give the same plan everywhere.

Tenancy is applied here too, because the planner knows no namespaces. A DevicePool's
`allowedNamespaces` removes the pool from the profiles of services of other namespaces; its
`maxPriority` caps the priority of the services that may use it. The planner has one priority
per service (its demand's weight in the first objective), not one per (service, pool), so a
service is planned at min(spec.priority, the lowest maxPriority among the pools it may use):
that never lets a capped pool see a higher priority than its cap, at the price of capping the
service on its other pools too (to keep a high priority on an uncapped pool, leave the capped
pool out of the service's profiles). Both are reported per service (`ProblemBuild.by_service`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from accordion.operator.api import (
    MAX_QPS,
    BatchLatency,
    DemandSource,
    DevicePool,
    InferenceService,
    PipelineStageStatus,
    PlanRowStatus,
)
from accordion.operator.staged import planner_profiles
from accordion.solver import (
    Allocation,
    Plan,
    PlannerSettings,
    PlanRow,
    PoolSpec,
    Problem,
    ProfilePoint,
    ServiceSpec,
    VariantSpec,
)
from accordion.solver.mig import GPU_MODELS, MigSpec, slice_pool
from accordion.solver.problem import StageSpec


@dataclass(frozen=True)
class PoolAccess:
    """Who may use a DevicePool, and at what priority: what a `ServiceSpec` depends on."""

    allowed_namespaces: frozenset[str] | None = None
    max_priority: int | None = None

    @classmethod
    def of(cls, pool: DevicePool) -> PoolAccess:
        allowed = pool.spec.allowed_namespaces
        return cls(None if allowed is None else frozenset(allowed), pool.spec.max_priority)

    def admits(self, namespace: str) -> bool:
        return self.allowed_namespaces is None or namespace in self.allowed_namespaces


ServiceMemo = dict[
    str,
    tuple[InferenceService, float | None, dict[str, PoolAccess], ServiceSpec, list[str]],
]
"""`to_problem`'s memo: per service key, the inputs of its `ServiceSpec` and the result."""


@dataclass
class ProblemBuild:
    """A problem and what was left out of it on the way (with reasons, for the user)."""

    problem: Problem
    warnings: list[str] = field(default_factory=list)
    by_service: dict[str, list[str]] = field(default_factory=dict)
    """The warnings that concern one service (unknown pools, pool access, priority capped),
    by service key: what its status should say (condition PoolAccess)."""


def profile_point(b: BatchLatency) -> ProfilePoint:
    """One batch-size measurement, milliseconds at the API edge to seconds inside."""
    return ProfilePoint(
        batch_size=b.batch_size,
        p50_s=b.p50_ms / 1000.0,
        p90_s=None if b.p90_ms is None else b.p90_ms / 1000.0,
        p99_s=None if b.p99_ms is None else b.p99_ms / 1000.0,
    )


def base_demand_qps(isvc: InferenceService, measured: Mapping[str, float]) -> float:
    """Demand estimate before headroom: the measurement if any, else the spec's static qps.

    A measurement is clamped into the API's bounds ([0, MAX_QPS]); one that is not a finite
    number counts as no measurement (the demand readers reject those; this is the last guard
    in front of the planner's arithmetic).
    """
    value = measured.get(isvc.key)
    if value is not None and math.isfinite(value):
        return min(max(0.0, value), MAX_QPS)
    if isvc.spec.demand.qps is not None:
        return isvc.spec.demand.qps
    return 0.0


def planned_demand_qps(isvc: InferenceService, measured: Mapping[str, float]) -> float:
    """Demand the plan is made for: the estimate plus the service's headroom."""
    return base_demand_qps(isvc, measured) * (1.0 + isvc.spec.demand.headroom)


def to_problem(
    services: Iterable[InferenceService],
    pools: Iterable[DevicePool],
    measured_qps: Mapping[str, float] | None = None,
    current: Iterable[Allocation] = (),
    settings: PlannerSettings | None = None,
    memo: ServiceMemo | None = None,
    available_devices: Mapping[str, int] | None = None,
    mig_current: Mapping[str, list[dict[str, int]]] | None = None,
) -> ProblemBuild:
    """Build the planner's problem from InferenceServices and DevicePools.

    `measured_qps` maps `namespace/name` to a measured demand (e.g. from Prometheus); services
    without a measurement use their static `demand.qps`. Profiles that name a pool that does
    not exist are left out with a warning rather than failing the whole cluster's plan.

    `memo` (a dict the caller keeps between calls) re-uses a service's `ServiceSpec` while the
    service (compared by value), its measured demand and the pools (names and access) are
    unchanged: at a thousand services, building every spec again costs more than the rest of
    the problem.

    `available_devices` (per pool name, e.g. from `pools.available_devices` over the cluster's
    Nodes) caps a pool's `spec.devices` at what its nodes can really offer; pools not in it are
    taken at their declared count.

    A DevicePool with `spec.mig` becomes a MIG pool of the planner (`accordion.solver.mig`):
    profiles name its slices `<pool>/<profile>`, and `mig_current` (per pool, each GPU's
    layout now, `mig.current_layouts`) lets the planner keep layouts where it can.
    """
    measured = measured_qps or {}
    pool_list = sorted(pools, key=lambda p: p.metadata.name)
    known = {p.metadata.name: PoolAccess.of(p) for p in pool_list}
    # A MIG pool is used through its slices only (`accordion.solver.mig.slice_pool`).
    for p in pool_list:
        if p.spec.mig is not None:
            del known[p.metadata.name]
            for profile in GPU_MODELS[p.spec.mig.gpu_model]:
                known[slice_pool(p.metadata.name, profile)] = PoolAccess.of(p)
    warnings: list[str] = []
    by_service: dict[str, list[str]] = {}
    specs = []
    seen: set[str] = set()
    for isvc in sorted(services, key=lambda s: s.key):
        seen.add(isvc.key)
        qps = measured.get(isvc.key)
        hit = memo.get(isvc.key) if memo is not None else None
        if hit is not None and hit[1] == qps and hit[2] == known and hit[0] == isvc:
            spec, spec_warnings = hit[3], hit[4]
        else:
            spec, spec_warnings = _service_spec(isvc, measured, known)
            if memo is not None:
                memo[isvc.key] = (isvc, qps, known, spec, spec_warnings)
        specs.append(spec)
        warnings.extend(spec_warnings)
        if spec_warnings:
            by_service[isvc.key] = spec_warnings
    if memo is not None:
        for key in [k for k in memo if k not in seen]:
            del memo[key]
    variants = {(spec.name, v.name) for spec in specs for v in spec.variants}
    problem = Problem(
        pools=[
            PoolSpec(
                name=p.metadata.name,
                devices=_capped(p, available_devices),
                cost_per_device=p.spec.cost_per_device,
                mig=_mig(p, _capped(p, available_devices), mig_current),
            )
            for p in pool_list
        ],
        services=specs,
        # What runs of a variant or pool that is gone is no allocation to keep.
        current=[a for a in current if a.pool in known and (a.service, a.variant) in variants],
        settings=settings or PlannerSettings(),
    )
    return ProblemBuild(problem=problem, warnings=warnings, by_service=by_service)


def _mig(
    pool: DevicePool, devices: int, current: Mapping[str, list[dict[str, int]]] | None
) -> MigSpec | None:
    """The planner's view of a MIG pool: model, allowed layouts, each GPU's layout now."""
    if pool.spec.mig is None:
        return None
    now = (current or {}).get(pool.metadata.name, [])[:devices]
    return MigSpec(gpu_model=pool.spec.mig.gpu_model, layouts=pool.spec.mig.layouts, current=now)


def _capped(pool: DevicePool, available: Mapping[str, int] | None) -> int:
    """The pool's declared devices, capped by `available` when it names the pool."""
    if available is None or pool.metadata.name not in available:
        return pool.spec.devices
    return max(0, min(pool.spec.devices, available[pool.metadata.name]))


def _service_spec(
    isvc: InferenceService, measured: Mapping[str, float], known: Mapping[str, PoolAccess]
) -> tuple[ServiceSpec, list[str]]:
    """One service as the planner sees it, and what was left out of it (warnings).

    Profiles for pools that do not exist, or whose `allowedNamespaces` leave the service's
    namespace out, are dropped; the priority is capped by the pools it may use (module
    docstring).
    """
    warnings: list[str] = []
    variants = []
    namespace = isvc.metadata.namespace or "default"
    refused: set[str] = set()
    used: set[str] = set()
    for v in isvc.spec.variants:
        profiles = {}
        for prof in v.profiles:
            access = known.get(prof.pool)
            if access is None:
                what = (
                    "a MIG pool, used through its slices (profiles for <pool>/<profile>)"
                    if any(k.startswith(f"{prof.pool}/") for k in known)
                    else "which does not exist"
                )
                warnings.append(
                    f"{isvc.key}: variant {v.name} has a profile for pool {prof.pool!r}, "
                    f"{what}; that pool is not used for it"
                )
                continue
            if not access.admits(namespace):
                refused.add(prof.pool)
                continue
            used.add(prof.pool)
            profiles[prof.pool] = [profile_point(b) for b in prof.batches]
        stages = [
            StageSpec(
                name=st.name,
                output_bytes=st.output_bytes,
                profiles={
                    prof.pool: [profile_point(b) for b in prof.batches]
                    for prof in st.profiles
                    if prof.pool in known and known[prof.pool].admits(namespace)
                },
            )
            for st in v.stages
        ]
        variants.append(
            VariantSpec(
                name=v.name, accuracy=v.accuracy, stages=stages, **planner_profiles(v, profiles)
            )
        )
    if refused:
        warnings.append(
            f"{isvc.key}: DevicePool {', '.join(sorted(refused))} does not admit namespace "
            f"{namespace!r} (allowedNamespaces); its profiles there are not used"
        )
    priority = isvc.spec.priority
    caps = {p: cap for p in used if (cap := known[p].max_priority) is not None}
    if caps and min(caps.values()) < priority:
        priority = min(caps.values())
        lowest = sorted(p for p, cap in caps.items() if cap == priority)
        warnings.append(
            f"{isvc.key}: priority {isvc.spec.priority} is planned as {priority}, the "
            f"maxPriority of DevicePool {', '.join(lowest)}"
        )
    unmeasured = isvc.spec.demand.source is not DemandSource.STATIC and isvc.key not in measured
    if unmeasured and isvc.spec.demand.qps is None:
        warnings.append(f"{isvc.key}: no demand measured yet and no demand.qps; planning 0")
    spec = ServiceSpec(
        name=isvc.key,
        demand_qps=planned_demand_qps(isvc, measured),
        slo_s=isvc.spec.slo.latency_ms / 1000.0,
        accuracy_floor=isvc.spec.accuracy.floor,
        accuracy_target=isvc.spec.accuracy.target,
        priority=priority,
        variants=variants,
        # A scale-to-zero service is planned at one replica until the loop finds it idle
        # (`control.idle`).
        min_replicas=isvc.spec.replica_floor(idle=False),
        max_replicas=isvc.spec.max_replicas,
    )
    return spec, warnings


def status_rows(plan: Plan | Sequence[PlanRow], service: str) -> list[PlanRowStatus]:
    """The plan rows of one service, as they appear in its status.

    `plan` may be the whole plan or already the service's rows (the loop groups them once).
    """
    all_rows = plan.rows if isinstance(plan, Plan) else plan
    rows = [r for r in all_rows if r.service == service and r.replicas > 0]
    routed_total = sum(r.routed_qps for r in rows)
    return [
        PlanRowStatus(
            variant=r.variant,
            pool=r.pool,
            replicas=r.replicas,
            max_batch_size=r.max_batch_size,
            capacity_qps=round(r.capacity_qps, 3),
            routed_qps=round(r.routed_qps, 3),
            weight=round(r.routed_qps / routed_total, 4) if routed_total > 0 else 0.0,
            accuracy=r.accuracy,
            spare_replicas=r.spare_replicas,
            pipeline=r.pipeline,
            stages=[
                PipelineStageStatus(
                    pool=st.pool,
                    first=st.first,
                    last=st.last,
                    replicas=st.replicas,
                    max_batch_size=st.max_batch_size,
                )
                for st in r.stages
            ],
        )
        for r in rows
    ]
