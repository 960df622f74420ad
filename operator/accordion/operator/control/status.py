"""What the control loop tells the user: each service's status (conditions, plan rows) and
events for the plan changes that matter.

Pure functions of a service, its plan rows and the world; `ControlLoop` calls them once per
service whose inputs changed and emits `UpdateStatus` only when the status differs from what
the world shows (no writes on an unchanged world).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

from accordion.operator.api import (
    Condition,
    DemandSource,
    InferenceService,
    InferenceServiceStatus,
    PlanRowStatus,
)
from accordion.operator.control.cost import CostSnapshot
from accordion.operator.control.desired import Routing, WorkerKey
from accordion.operator.control.pipelines import pipeline_ready
from accordion.operator.control.steps import RecordEvent, Step, UpdateStatus
from accordion.operator.control.world import DemandView, RunningWorker, World
from accordion.operator.planning import planned_demand_qps, status_rows
from accordion.solver import Plan, PlanRow, ServicePlan


def now_rfc3339(clock_s: float) -> str:
    return datetime.fromtimestamp(clock_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: Mapping[str, Condition],
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> Condition:
    """A condition, keeping its last transition time while its status stays."""
    status: Literal["True", "False"] = "True" if ok else "False"
    old = previous.get(type_)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )


def invalid_status(
    previous: InferenceServiceStatus | None,
    errors: Sequence[tuple[str, str]],
    generation: int | None,
    now: str,
) -> InferenceServiceStatus:
    """Status of a service whose spec does not validate: InvalidSpec with the field paths."""
    prev = {c.type: c for c in (previous.conditions if previous else [])}
    details = "; ".join(f"{path or '<root>'}: {msg}" for path, msg in errors)
    base = previous.model_copy() if previous else InferenceServiceStatus()
    return base.model_copy(
        update={
            "observed_generation": generation,
            "conditions": [
                condition(prev, "InvalidSpec", True, "InvalidSpec", details, generation, now),
                condition(
                    prev, "Ready", False, "InvalidSpec", "the spec is invalid", generation, now
                ),
            ],
        }
    )


def invalid_steps(world: World, now: str) -> list[Step]:
    """Status steps of the services whose spec is invalid (only where the status changes)."""
    steps: list[Step] = []
    for key, errors in sorted(world.invalid.items()):
        prev = world.status.get(key)
        status = invalid_status(prev, errors, world.invalid_generation.get(key), now)
        if status != prev:
            steps.append(UpdateStatus(key, status))
    return steps


def planning_failed_steps(world: World, message: str, now_s: float) -> list[Step]:
    """`Planned=False, reason PlanningFailed` on every service (the last good plan stays)."""
    now = now_rfc3339(now_s)
    steps: list[Step] = []
    for key, svc in sorted(world.services.items()):
        prev = world.status.get(key) or InferenceServiceStatus()
        conds = {c.type: c for c in prev.conditions}
        gen = svc.metadata.generation
        conds["Planned"] = condition(conds, "Planned", False, "PlanningFailed", message, gen, now)
        status = prev.model_copy(
            update={"conditions": [conds[t] for t in sorted(conds)], "observed_generation": gen}
        )
        if status != prev:
            steps.append(UpdateStatus(key, status))
    steps.extend(invalid_steps(world, now))
    return steps


def service_status_steps(
    key: str,
    svc: InferenceService,
    rows_of_plan: Sequence[PlanRow],
    svc_workers: Mapping[WorkerKey, RunningWorker],
    world: World,
    demand: DemandView,
    summary: ServicePlan | None,
    routing: Routing,
    now_s: float,
    planning_error: str | None = None,
    url: str | None = None,
    shortfall: str | None = None,
    notices: Sequence[str] = (),
    cost: CostSnapshot | None = None,
    prewarm: tuple[bool, int, int] | None = None,
    device_waits: Mapping[str, int] | None = None,
) -> list[Step]:
    """The service's status step (if its status changes) and the events of a plan change.

    `planning_error`: the last planner call failed and `rows_of_plan` are the last good plan's
    (Planned is then False with the reason, everything else describes what still runs).
    `url`: the service's endpoint (`status.url`), as the driver knows it; `shortfall`: why
    the plan cannot serve all of its demand (`shortfall_reason`); `notices`: what planning
    left out of the service (`planning.ProblemBuild.by_service`: pools its namespace may not
    use, priorities capped by a pool, profiles for pools that do not exist), shown as the
    PoolAccess condition. Failing worker pods (`World.worker_failures`) show as ModelsLoaded
    False, with a Warning event when it turns. `cost`: the service's cost figures
    (`control.cost`); `prewarm`: whether its replica is pre-warmed now, its pre-warms so far
    and those its traffic came back within (`control.idle`; shown for `minReplicas: 0`). A
    `minReplicas: 0` service that runs no replica is Ready (ScaledToZero): its router holds
    requests while one starts. `device_waits`: per pool, the service's new replicas that wait
    for a device of a full pool (`ControlLoop.device_waits`), named in the Ready condition
    while it is False."""
    now = now_rfc3339(now_s)
    steps: list[Step] = []
    gen = svc.metadata.generation
    prev = world.status.get(key) or InferenceServiceStatus()
    conds = {c.type: c for c in prev.conditions}
    rows = status_rows(rows_of_plan, key)
    prefix = f"{key}: "
    pool_notices = [
        n.removeprefix(prefix) for n in notices if "pool" in n.lower()
    ]  # tenancy (allowedNamespaces, maxPriority) and profiles for pools that do not exist
    failures = sorted(
        (wk.backend_name, reason, message)
        for wk, (reason, message) in world.worker_failures.items()
        if wk.service == key
    )
    ready_total = 0
    for row in rows:
        if row.stages:  # a pipeline: ready per stage, and as whole pipelines
            ready_total += pipeline_ready(key, row, svc_workers)
            continue
        wk = WorkerKey(service=key, variant=row.variant, pool=row.pool)
        running = svc_workers.get(wk)
        row.ready_replicas = min(row.replicas, running.ready_replicas if running else 0)
        ready_total += row.ready_replicas
    # The routing goes out before the status in the same pass (steps are ordered).
    all_ready = routing.final and bool(rows)
    scaled_to_zero = svc.spec.min_replicas == 0 and not rows and not svc_workers
    demand_qps = planned_demand_qps(svc, demand.qps)
    unserved = summary.unserved_qps if summary else demand_qps
    new: dict[str, Condition] = {}
    if planning_error is not None:
        new["Planned"] = condition(
            conds, "Planned", False, "PlanningFailed", planning_error, gen, now
        )
    else:
        new["Planned"] = condition(
            conds,
            "Planned",
            summary is not None,
            "Planned" if summary is not None else "NotPlanned",
            (
                f"{sum(r.replicas for r in rows)} replicas of {len(rows)} variant/pool "
                f"rows for {demand_qps:.1f} req/s"
                if summary is not None
                else "the service is not in the plan"
            ),
            gen,
            now,
        )
    degraded = unserved > 1e-6
    new["Degraded"] = condition(
        conds,
        "Degraded",
        degraded,
        "Shortfall" if degraded else "AllDemandServed",
        (
            f"{unserved:.1f} of {demand_qps:.1f} req/s cannot be served at or above "
            f"the accuracy floor {svc.spec.accuracy.floor:g}"
            + (f": {shortfall}" if shortfall else "")
            if degraded
            else "all demand is planned to be served"
        ),
        gen,
        now,
    )
    unavailable = demand.unavailable.get(key)
    if svc.spec.demand.source is not DemandSource.STATIC or unavailable:
        new["DemandUnavailable"] = condition(
            conds,
            "DemandUnavailable",
            unavailable is not None,
            ("QueryRejected" if key in demand.rejected else "MeasurementFailed")
            if unavailable
            else "Measured",
            (
                f"{unavailable}; planning for the last estimate"
                if unavailable
                else "demand is measured"
            ),
            gen,
            now,
        )
    new["InvalidSpec"] = condition(
        conds, "InvalidSpec", False, "Valid", "the spec is valid", gen, now
    )
    if pool_notices or "PoolAccess" in conds:
        new["PoolAccess"] = condition(
            conds,
            "PoolAccess",
            not pool_notices,
            "Restricted" if pool_notices else "Allowed",
            "; ".join(pool_notices) if pool_notices else "every pool in the profiles is used",
            gen,
            now,
        )
    if failures or "ModelsLoaded" in conds:
        reasons = sorted({reason for _, reason, _ in failures})
        new["ModelsLoaded"] = condition(
            conds,
            "ModelsLoaded",
            not failures,
            (reasons[0] if len(reasons) == 1 else "WorkersFailing") if failures else "Loaded",
            "; ".join(f"{backend}: {reason}: {message}" for backend, reason, message in failures)
            if failures
            else "every worker runs",
            gen,
            now,
        )
        was = conds.get("ModelsLoaded")
        if failures and (was is None or was.status != "False"):
            steps.append(
                RecordEvent(key, "Warning", new["ModelsLoaded"].reason, new["ModelsLoaded"].message)
            )
    new["Ready"] = condition(
        conds,
        "Ready",
        all_ready or scaled_to_zero,
        "Ready"
        if all_ready
        else "ScaledToZero"
        if scaled_to_zero
        else ("NoReplicas" if not rows else "Progressing"),
        (
            f"{ready_total} replicas ready, routing in place"
            if all_ready
            else "no replica (idle, minReplicas 0): the router holds requests while one starts"
            if scaled_to_zero
            else f"{ready_total} of {sum(r.replicas for r in rows)} replicas ready"
            + "".join(
                f"; {n} wait{'s' if n == 1 else ''} for a device of the full pool {pool} "
                "(held by old replicas, which go as their services can spare them)"
                for pool, n in sorted((device_waits or {}).items())
            )
        ),
        gen,
        now,
    )
    status = prev.model_copy(
        update={
            "observed_generation": gen,
            "conditions": [new[t] for t in sorted(new)],
            "demand_qps": round(demand_qps, 3),
            "capacity_qps": round(summary.capacity_qps, 3) if summary else 0.0,
            "spare_capacity_qps": round(summary.spare_capacity_qps, 3) if summary else 0.0,
            "served_qps": round(summary.served_qps, 3) if summary else 0.0,
            "effective_accuracy": (
                round(summary.effective_accuracy, 3)
                if summary and summary.effective_accuracy is not None
                else None
            ),
            "ready_replicas": ready_total,
            "plan": rows,
            "url": url,
            "scaled_to_zero": scaled_to_zero if svc.spec.min_replicas == 0 else None,
            "cold_start_seconds": (
                round(demand.cold_start_s[key], 3)
                if key in demand.cold_start_s
                else prev.cold_start_seconds
            ),
        }
    )
    if prewarm is not None:
        shown = prewarm if svc.spec.min_replicas == 0 else (None, None, None)
        status = status.model_copy(
            update={"prewarmed": shown[0], "prewarms": shown[1], "prewarms_met": shown[2]}
        )
    if cost is not None:
        status = status.model_copy(
            update={
                "device_seconds": cost.device_seconds,
                "cost": cost.cost,
                "cost_per_1k_requests": cost.cost_per_1k_requests,
            }
        )
    plan_changed = [_unready(r) for r in rows] != [_unready(r) for r in prev.plan]
    if plan_changed:
        status = status.model_copy(update={"last_plan_time": now})
        steps.extend(plan_events(key, prev, status))
    if status != prev:
        steps.append(UpdateStatus(key, status))
    return steps


def plan_events(
    service: str, prev: InferenceServiceStatus, new: InferenceServiceStatus
) -> list[Step]:
    """Events for the plan changes a user cares about, in words."""
    events: list[Step] = []
    old_acc, new_acc = _accuracy(prev), _accuracy(new)
    if old_acc is not None and new_acc is not None and abs(new_acc - old_acc) > 1e-3:
        reason = "AccuracyScaledDown" if new_acc < old_acc else "AccuracyScaledUp"
        events.append(
            RecordEvent(
                service,
                "Normal",
                reason,
                f"effective accuracy {old_acc:g} -> {new_acc:g} for "
                f"{new.demand_qps or 0:g} req/s: "
                + ", ".join(f"{r.variant}@{r.pipeline or r.pool} x{r.replicas}" for r in new.plan),
            )
        )
    old_n, new_n = sum(r.replicas for r in prev.plan), sum(r.replicas for r in new.plan)
    # A pipeline by its id (its parts and pools): two may start on the same pool.
    if old_n != new_n or {(r.variant, r.pipeline or r.pool) for r in prev.plan} != {
        (r.variant, r.pipeline or r.pool) for r in new.plan
    }:
        events.append(
            RecordEvent(
                service,
                "Normal",
                "ReplicasChanged",
                f"{old_n} -> {new_n} worker replicas: "
                + (
                    ", ".join(f"{r.variant}@{r.pipeline or r.pool} x{r.replicas}" for r in new.plan)
                    or "none"
                ),
            )
        )
    was = next((c for c in prev.conditions if c.type == "Degraded"), None)
    now = next((c for c in new.conditions if c.type == "Degraded"), None)
    if now is not None and (was is None or was.status != now.status):
        if now.status == "True":
            events.append(RecordEvent(service, "Warning", "Degraded", now.message))
        elif was is not None:
            events.append(RecordEvent(service, "Normal", "Recovered", now.message))
    return events


def shortfall_reason(
    svc: InferenceService, key: str, plan: Plan, devices: Mapping[str, int], overload: bool
) -> str:
    """Why a service is short, in words: no variant at or above its floor meets its SLO, or the
    pools it can use are full (and in overload: planned without headroom or margin)."""
    excluded = [e for e in plan.excluded if e.service == key]
    floor = svc.spec.accuracy.floor
    usable = {
        (v.name, p.pool)
        for v in svc.spec.variants
        if v.accuracy >= floor
        for p in v.profiles
        if p.pool in devices
    } - {(e.variant, e.pool) for e in excluded}
    # A variant cut into a pipeline uses its stages' pools (even where it fits whole nowhere).
    usable |= {(r.variant, st.pool) for r in plan.rows if r.service == key for st in r.stages}
    if not usable:
        why = "; ".join(f"{e.variant}@{e.pool}: {e.reason}" for e in excluded[:3])
        return "no variant at or above the floor can meet the SLO on any pool" + (
            f" ({why})" if why else ""
        )
    used: dict[str, int] = {}
    for row in plan.rows:
        main = row.replicas - row.spare_replicas
        # A pipeline replica takes devices in each of its stages' pools.
        for pool, n in [(st.pool, main * st.devices_per_replica) for st in row.stages] or [
            (row.pool, main)
        ]:
            used[pool] = used.get(pool, 0) + n
    pools = sorted({pool for _, pool in usable})
    full = [p for p in pools if used.get(p, 0) >= devices[p]]
    parts = []
    if full:
        parts.append(
            "every device of "
            + ", ".join(f"{p} ({used.get(p, 0)}/{devices[p]})" for p in full)
            + " is planned"
        )
    if len(full) < len(pools):
        parts.append(
            "the planner serves other services' demand there first (fair share, priority, "
            "then the most requests per device)"
        )
    if overload:
        parts.append("planned without headroom or utilization margin (overload)")
    return "; ".join(parts)


def _accuracy(status: InferenceServiceStatus) -> float | None:
    """The effective accuracy; while the service serves no demand (it has none measured yet,
    or is idle: None), the accuracy its planned replicas would serve at, weighted by their
    capacity (a plan that swaps the variant of an idle service still scales accuracy)."""
    if status.effective_accuracy is not None:
        return status.effective_accuracy
    weights = [
        (r.accuracy, r.capacity_qps * (r.replicas - r.spare_replicas) / r.replicas)
        for r in status.plan
        if r.replicas > r.spare_replicas
    ]
    total = sum(w for _, w in weights)
    return round(sum(a * w for a, w in weights) / total, 3) if total > 0 else None


def _unready(row: PlanRowStatus) -> PlanRowStatus:
    """The row without its ready counts (its stages' too): what the plan decided."""
    stages = [st.model_copy(update={"ready_replicas": 0}) for st in row.stages]
    return row.model_copy(update={"ready_replicas": 0, "stages": stages})
