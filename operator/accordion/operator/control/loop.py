"""The control loop: world view + demand -> plan -> desired state -> make-before-break steps.

One loop, two drivers. This module knows no kopf and no Kubernetes client. A driver keeps a
`World` (the InferenceServices and DevicePools, which specs are invalid, the worker groups that
run with their ready replica counts, the routing each router has, the status each service
shows) and a `DemandView` (smoothed demand per service, and which services' demand could not be
measured). `ControlLoop.decide(world, demand)` is pure apart from the planner call: it makes
one plan for the whole cluster (services share pools), derives the desired state and returns
the ordered `Step`s that move the world towards it. `ControlLoop.reconcile` hands the steps to
an `Actuator`, which carries them out (Kubernetes objects in the cluster, processes in local
mode).

Order of the steps (make before break), every step idempotent:

1. `EnsureWorker` for new worker groups and groups that grow or change settings;
2. `ApplyRouting` per service: weights that follow the capacity of *ready* replicas, so a new
   backend takes traffic only as its replicas become ready;
3. only for a service whose routing is final (every planned replica ready, the routing in place
   and settled for `drain_s`): `EnsureWorker` with fewer replicas, and `RemoveWorker` for
   groups the plan no longer wants. Until then the old replicas keep serving;
4. `UpdateStatus` and `RecordEvent` (plan changes that matter, in words).

Re-running the loop on an unchanged world yields no steps (zero churn): the plan is kept while
the services, their demand and the pools are unchanged, and the planner is given the previous
plan as the current allocation, so that ties are broken towards what was decided before, not
towards whatever happens to run mid-transition.

Cost at scale (a thousand services): the world's objects are treated as values (a change is a
new object, never a mutation in place), so a service whose inputs (its spec, plan rows, running
workers, routing, status and demand) equal those of a pass that found nothing to do for it is
skipped without recomputing its routing or status; the planner's per-service input is memoised
the same way (`planning.to_problem`). What remains per pass is the planner call itself, when
the problem changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from accordion.operator.api import (
    Condition,
    DemandSource,
    DevicePool,
    InferenceService,
    InferenceServiceStatus,
)
from accordion.operator.control.desired import (
    Routing,
    WorkerKey,
    WorkerSpec,
    service_routing,
    worker_specs,
)
from accordion.operator.planning import ServiceMemo, planned_demand_qps, status_rows, to_problem
from accordion.operator.pools import available_devices
from accordion.solver import Allocation, Plan, PlannerSettings, PlanRow, Problem, ServicePlan

log = logging.getLogger(__name__)

Planner = Callable[[Problem], Plan]


def default_planner(problem: Problem) -> Plan:
    """The OR-Tools planner of `accordion.solver.planner` (imported on first use)."""
    from accordion.solver.planner import plan

    return plan(problem)


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class RunningWorker:
    """A worker group that exists: the spec it was created with, and how many replicas are ready."""

    spec: WorkerSpec
    ready_replicas: int = 0


@dataclass(frozen=True)
class AppliedRouting:
    """The routing a service's router has now, and when it was applied (clock seconds)."""

    routing: Routing
    applied_at_s: float = 0.0


@dataclass
class World:
    """What the driver knows of the cluster (or the machine). Keys are `namespace/name`.

    `invalid` maps a service to its (field path, message) errors: such a service is not
    planned, its running workers are left alone, and only its status is written.
    """

    services: dict[str, InferenceService] = field(default_factory=dict)
    pools: dict[str, DevicePool] = field(default_factory=dict)
    invalid: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    invalid_generation: dict[str, int | None] = field(default_factory=dict)
    workers: dict[WorkerKey, RunningWorker] = field(default_factory=dict)
    routing: dict[str, AppliedRouting] = field(default_factory=dict)
    status: dict[str, InferenceServiceStatus] = field(default_factory=dict)
    nodes: list[dict[str, Any]] | None = None
    """The cluster's Nodes (API dicts) when the driver watches them: pools are then capped at
    the devices their ready nodes offer (`pools.available_devices`). None: pools are taken at
    their declared `spec.devices`."""


@dataclass
class DemandView:
    """Smoothed demand (req/s, before headroom) per service, and measurement failures."""

    qps: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Services whose demand could not be measured now, with why (the last estimate is used)."""


@dataclass(frozen=True)
class LoopSettings:
    """Knobs of the loop (the planner's own knobs are `planner`)."""

    planner: PlannerSettings = field(default_factory=PlannerSettings)
    drain_s: float = 0.0
    """How long a final routing must have been in place before old replicas are removed
    (routers pick a new table up with some delay)."""


# ------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class EnsureWorker:
    """Create or update a worker group to exactly this spec (replicas included)."""

    spec: WorkerSpec
    exists: bool
    phase: Literal["make", "break"] = "make"


@dataclass(frozen=True)
class RemoveWorker:
    """Remove a worker group that carries no traffic any more."""

    key: WorkerKey


@dataclass(frozen=True)
class ApplyRouting:
    """Make sure the service's router exists and routes by `routing`.

    A routing without routes (no replica ready yet, or nothing planned) still creates the
    router; `desired.routing_table` then gives no table and the router answers 503.
    """

    service: str
    routing: Routing
    uid: str | None = None


@dataclass(frozen=True)
class RemoveService:
    """Remove everything that serves a deleted service (router, table, workers)."""

    service: str
    workers: tuple[WorkerKey, ...] = ()


@dataclass(frozen=True)
class UpdateStatus:
    """Write the service's status (only emitted when it differs from what the world shows)."""

    service: str
    status: InferenceServiceStatus


@dataclass(frozen=True)
class RecordEvent:
    """Tell the user about a plan change that matters (a Kubernetes Event, a log line)."""

    service: str
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


Step = EnsureWorker | RemoveWorker | ApplyRouting | RemoveService | UpdateStatus | RecordEvent


class Actuator(Protocol):
    """Carries out steps. Each call must be idempotent; raise to report a failure.

    Owner identity (for ownerReferences) travels in the steps where needed; a worker's URL is
    the actuator's business (`accordion.operator.control.desired.routing_table`).
    """

    async def apply(self, step: Step) -> None: ...


@dataclass
class Decision:
    """The outcome of one pass of the loop."""

    plan: Plan | None
    targets: dict[WorkerKey, WorkerSpec]
    routing: dict[str, Routing]
    steps: list[Step]
    planned: bool
    """False when the planner was not run again (same problem as last time)."""
    requeue_after_s: float | None = None
    """Run again this soon even without a change (a drain is in progress)."""
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class _ServiceOutcome:
    """One service's part of a decision."""

    routing: Routing
    make: list[Step] = field(default_factory=list)
    route: list[Step] = field(default_factory=list)
    status: list[Step] = field(default_factory=list)
    requeue_after_s: float | None = None

    @property
    def settled(self) -> bool:
        return not (self.make or self.route or self.status) and self.requeue_after_s is None


@dataclass(frozen=True)
class _Settled:
    """The inputs of a service for which a pass found nothing to do, and its routing."""

    inputs: tuple[Any, ...]
    routing: Routing


@dataclass
class ReconcileResult:
    decision: Decision
    applied: list[Step]
    failed: list[tuple[Step, BaseException]]


# ------------------------------------------------------------------------------------ status


def _now_rfc3339(clock_s: float) -> str:
    return datetime.fromtimestamp(clock_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    previous: Mapping[str, Condition],
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> Condition:
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
                _condition(prev, "InvalidSpec", True, "InvalidSpec", details, generation, now),
                _condition(
                    prev, "Ready", False, "InvalidSpec", "the spec is invalid", generation, now
                ),
            ],
        }
    )


# -------------------------------------------------------------------------------------- loop


class ControlLoop:
    """The control loop shared by the operator and local mode (see the module docstring).

    Keep one instance per driver: it remembers the last problem and plan (so an unchanged world
    is not re-planned and ties are broken towards the previous decision).
    """

    def __init__(
        self,
        settings: LoopSettings | None = None,
        planner: Planner = default_planner,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or LoopSettings()
        self.planner = planner
        self.clock = clock
        self.last_problem: Problem | None = None
        self.last_plan: Plan | None = None
        self.plan_time_s: float = 0.0
        """Wall time of the last planner call (for benchmarks and status)."""
        self.decide_time_s: float = 0.0
        """Wall time of the last `decide` (planning included)."""
        self._spec_memo: ServiceMemo = {}
        self._targets_memo: dict[str, tuple[Any, dict[WorkerKey, WorkerSpec]]] = {}
        self._settled: dict[str, _Settled] = {}
        self._current_memo: tuple[Plan, list[Allocation]] | None = None

    # -- planning ------------------------------------------------------------------------------

    def _current(self, world: World) -> list[Allocation]:
        """What the planner should avoid changing: the previous plan, or what runs at start."""
        if self.last_plan is not None:
            if self._current_memo is None or self._current_memo[0] is not self.last_plan:
                allocations = [
                    Allocation(
                        service=r.service, variant=r.variant, pool=r.pool, replicas=r.replicas
                    )
                    for r in self.last_plan.rows
                    if r.replicas > 0
                ]
                self._current_memo = (self.last_plan, allocations)
            return [a for a in self._current_memo[1] if a.service in world.services]
        return [
            Allocation(service=k.service, variant=k.variant, pool=k.pool, replicas=w.spec.replicas)
            for k, w in sorted(world.workers.items(), key=lambda kv: kv[0].sort_key())
            if k.service in world.services
            and any(v.name == k.variant for v in world.services[k.service].spec.variants)
        ]

    def make_plan(self, world: World, demand: DemandView) -> tuple[Plan, bool, list[str]]:
        """The plan for the whole cluster; re-uses the last one when the problem is unchanged."""
        build = to_problem(
            world.services.values(),
            world.pools.values(),
            measured_qps=demand.qps,
            current=self._current(world),
            settings=self.settings.planner,
            memo=self._spec_memo,
            available_devices=(
                None
                if world.nodes is None
                else available_devices(world.pools.values(), world.nodes)
            ),
        )
        last = self.last_problem
        if (
            self.last_plan is not None
            and last is not None
            and build.problem.pools == last.pools
            and build.problem.services == last.services
            and build.problem.settings == last.settings
        ):
            # Same services, demand and pools: the plan stands. (`current` is left out of the
            # comparison: it is the last plan itself, so it changes after every plan change;
            # re-planning for that alone would cost a planner call for nothing.)
            return self.last_plan, False, build.warnings
        started = time.perf_counter()
        plan = self.planner(build.problem)
        self.plan_time_s = time.perf_counter() - started
        self.last_problem, self.last_plan = build.problem, plan
        return plan, True, build.warnings

    # -- deciding ------------------------------------------------------------------------------

    def decide(self, world: World, demand: DemandView) -> Decision:
        """Plan, derive the desired state, and list the steps that lead there (in order)."""
        started = time.perf_counter()
        try:
            return self._decide(world, demand)
        finally:
            self.decide_time_s = time.perf_counter() - started

    def _decide(self, world: World, demand: DemandView) -> Decision:
        now_s = self.clock()
        try:
            plan, planned, warnings = self.make_plan(world, demand)
        except Exception as exc:  # the planner must never take the operator down
            log.exception("planning failed")
            return Decision(
                plan=None,
                targets={},
                routing={},
                steps=self._status_steps_without_plan(world, f"planning failed: {exc}", now_s),
                planned=False,
                error=str(exc),
            )
        # Group once: per-service work below must not scan the whole cluster (n services).
        rows_by: dict[str, list[PlanRow]] = {}
        for row in plan.rows:
            if row.replicas > 0:
                rows_by.setdefault(row.service, []).append(row)
        running_by: dict[str, dict[WorkerKey, RunningWorker]] = {}
        for key, worker in world.workers.items():
            running_by.setdefault(key.service, {})[key] = worker
        summaries = {s.service: s for s in plan.services}

        targets: dict[WorkerKey, WorkerSpec] = {}
        outcomes: dict[str, _ServiceOutcome] = {}
        requeue: float | None = None
        for svc_key, svc in sorted(world.services.items()):
            rows = tuple(rows_by.get(svc_key, ()))
            svc_targets = self._targets(svc_key, svc, rows, world.pools)
            targets.update(svc_targets)
            inputs = (
                svc,
                rows,
                svc_targets,
                running_by.get(svc_key, {}),
                world.routing.get(svc_key),
                world.status.get(svc_key),
                demand.qps.get(svc_key),
                demand.unavailable.get(svc_key),
                summaries.get(svc_key),
            )
            memo = self._settled.get(svc_key)
            if memo is not None and memo.inputs == inputs:
                outcomes[svc_key] = _ServiceOutcome(routing=memo.routing)
                continue
            outcome = self._decide_service(
                svc_key, svc, rows, svc_targets, inputs[3], world, demand, summaries, now_s
            )
            outcomes[svc_key] = outcome
            if outcome.requeue_after_s is not None:
                requeue = (
                    outcome.requeue_after_s
                    if requeue is None
                    else min(requeue, outcome.requeue_after_s)
                )
            if outcome.settled:
                # Nothing to do for these inputs: the next pass with equal inputs skips it.
                self._settled[svc_key] = _Settled(inputs, outcome.routing)
            else:
                self._settled.pop(svc_key, None)
        for memo_of in (self._settled, self._targets_memo):
            for old in [k for k in memo_of if k not in world.services]:
                del memo_of[old]

        # Steps in the order of the module docstring: make (every service), routing and break
        # (per service), removal of services that are gone, then status and events.
        steps: list[Step] = [s for o in outcomes.values() for s in o.make]
        for o in outcomes.values():
            steps.extend(o.route)
        gone = sorted({k.service for k in world.workers} | set(world.routing))
        for svc_key in gone:
            if svc_key in world.services or svc_key in world.invalid:
                continue
            workers = tuple(sorted(running_by.get(svc_key, {}), key=WorkerKey.sort_key))
            steps.append(RemoveService(svc_key, workers))
        for o in outcomes.values():
            steps.extend(o.status)
        steps.extend(self._invalid_steps(world, _now_rfc3339(now_s)))
        return Decision(
            plan=plan,
            targets=targets,
            routing={k: o.routing for k, o in outcomes.items()},
            steps=steps,
            planned=planned,
            requeue_after_s=requeue,
            warnings=warnings,
        )

    def _targets(
        self,
        svc_key: str,
        svc: InferenceService,
        rows: tuple[PlanRow, ...],
        pools: Mapping[str, DevicePool],
    ) -> dict[WorkerKey, WorkerSpec]:
        """The service's worker groups (`desired.worker_specs`), re-used while inputs are equal."""
        key = (svc, rows, tuple(pools.get(r.pool) for r in rows))
        hit = self._targets_memo.get(svc_key)
        if hit is not None and hit[0] == key:
            return hit[1]
        specs = worker_specs(list(rows), {svc_key: svc}, pools)
        self._targets_memo[svc_key] = (key, specs)
        return specs

    def _decide_service(
        self,
        svc_key: str,
        svc: InferenceService,
        rows: tuple[PlanRow, ...],
        svc_targets: Mapping[WorkerKey, WorkerSpec],
        svc_workers: Mapping[WorkerKey, RunningWorker],
        world: World,
        demand: DemandView,
        summaries: Mapping[str, ServicePlan],
        now_s: float,
    ) -> _ServiceOutcome:
        """Steps of one service: make, routing, break (when settled), status and events."""
        out = _ServiceOutcome(routing=Routing(service=svc_key, slo_ms=svc.spec.slo.latency_ms))
        # 1. make: new groups, groups that grow, groups whose settings change.
        for key, spec in sorted(svc_targets.items(), key=lambda kv: kv[0].sort_key()):
            have = svc_workers.get(key)
            if have is None:
                out.make.append(EnsureWorker(spec, exists=False))
            elif have.spec != spec and spec.replicas >= have.spec.replicas:
                out.make.append(EnsureWorker(spec, exists=True))
            elif have.spec != spec:
                # Shrinks: new settings now, at the current size; fewer replicas later.
                grown = spec.with_replicas(have.spec.replicas)
                if have.spec != grown:
                    out.make.append(EnsureWorker(grown, exists=True))

        # 2. routing, 3. break when the routing is final and settled.
        svc_running = {k: w.spec for k, w in svc_workers.items()}
        ready = {k: w.ready_replicas for k, w in svc_workers.items()}
        routing = service_routing(
            svc_key, svc.spec.slo.latency_ms, rows, svc_targets, svc_running, ready
        )
        out.routing = routing
        applied = world.routing.get(svc_key)
        in_place = applied is not None and applied.routing == routing
        if not in_place:
            out.route.append(ApplyRouting(svc_key, routing, svc.metadata.uid))
        shrinking = any(
            k not in svc_targets or svc_targets[k].replicas < s.replicas
            for k, s in svc_running.items()
        )
        if routing.final and shrinking:
            # The final routing is in place (or goes out first in this pass): break once it
            # has settled for drain_s.
            settled_for = now_s - applied.applied_at_s if in_place and applied else 0.0
            wait = self.settings.drain_s - settled_for
            if wait > 0:
                out.requeue_after_s = wait
            else:
                out.route.extend(self._break(svc_key, svc_targets, world))

        # 4. status and events.
        out.status = self._service_status(
            svc_key, svc, rows, svc_workers, world, demand, summaries.get(svc_key), routing, now_s
        )
        return out

    @staticmethod
    def _break(
        service: str, svc_targets: Mapping[WorkerKey, WorkerSpec], world: World
    ) -> list[Step]:
        steps: list[Step] = []
        for key, have in sorted(world.workers.items(), key=lambda kv: kv[0].sort_key()):
            if key.service != service:
                continue
            target = svc_targets.get(key)
            if target is None:
                steps.append(RemoveWorker(key))
            elif target.replicas < have.spec.replicas:
                steps.append(EnsureWorker(target, exists=True, phase="break"))
        return steps

    # -- status --------------------------------------------------------------------------------

    def _status_steps_without_plan(self, world: World, message: str, now_s: float) -> list[Step]:
        now = _now_rfc3339(now_s)
        steps: list[Step] = []
        for key, svc in sorted(world.services.items()):
            prev = world.status.get(key) or InferenceServiceStatus()
            conds = {c.type: c for c in prev.conditions}
            gen = svc.metadata.generation
            conds["Planned"] = _condition(
                conds, "Planned", False, "PlanningFailed", message, gen, now
            )
            status = prev.model_copy(
                update={"conditions": [conds[t] for t in sorted(conds)], "observed_generation": gen}
            )
            if status != prev:
                steps.append(UpdateStatus(key, status))
        steps.extend(self._invalid_steps(world, now))
        return steps

    def _invalid_steps(self, world: World, now: str) -> list[Step]:
        steps: list[Step] = []
        for key, errors in sorted(world.invalid.items()):
            prev = world.status.get(key)
            status = invalid_status(prev, errors, world.invalid_generation.get(key), now)
            if status != prev:
                steps.append(UpdateStatus(key, status))
        return steps

    def _service_status(
        self,
        key: str,
        svc: InferenceService,
        rows_of_plan: Sequence[PlanRow],
        svc_workers: Mapping[WorkerKey, RunningWorker],
        world: World,
        demand: DemandView,
        summary: ServicePlan | None,
        routing: Routing,
        now_s: float,
    ) -> list[Step]:
        """The service's status step (if its status changes) and the events of a plan change."""
        now = _now_rfc3339(now_s)
        steps: list[Step] = []
        gen = svc.metadata.generation
        prev = world.status.get(key) or InferenceServiceStatus()
        conds = {c.type: c for c in prev.conditions}
        rows = status_rows(rows_of_plan, key)
        ready_total = 0
        for row in rows:
            wk = WorkerKey(service=key, variant=row.variant, pool=row.pool)
            running = svc_workers.get(wk)
            row.ready_replicas = min(row.replicas, running.ready_replicas if running else 0)
            ready_total += row.ready_replicas
        # The routing goes out before the status in the same pass (steps are ordered).
        all_ready = routing.final and bool(rows)
        demand_qps = planned_demand_qps(svc, demand.qps)
        unserved = summary.unserved_qps if summary else demand_qps
        new: dict[str, Condition] = {}
        new["Planned"] = _condition(
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
        new["Degraded"] = _condition(
            conds,
            "Degraded",
            degraded,
            "Shortfall" if degraded else "AllDemandServed",
            (
                f"{unserved:.1f} of {demand_qps:.1f} req/s cannot be served at or above "
                f"the accuracy floor {svc.spec.accuracy.floor:g}"
                if degraded
                else "all demand is planned to be served"
            ),
            gen,
            now,
        )
        unavailable = demand.unavailable.get(key)
        if svc.spec.demand.source is DemandSource.PROMETHEUS or unavailable:
            new["DemandUnavailable"] = _condition(
                conds,
                "DemandUnavailable",
                unavailable is not None,
                "MeasurementFailed" if unavailable else "Measured",
                (
                    f"{unavailable}; planning for the last estimate"
                    if unavailable
                    else "demand is measured"
                ),
                gen,
                now,
            )
        new["InvalidSpec"] = _condition(
            conds, "InvalidSpec", False, "Valid", "the spec is valid", gen, now
        )
        ready_ok = all_ready
        new["Ready"] = _condition(
            conds,
            "Ready",
            ready_ok,
            "Ready" if ready_ok else ("NoReplicas" if not rows else "Progressing"),
            (
                f"{ready_total} replicas ready, routing in place"
                if ready_ok
                else f"{ready_total} of {sum(r.replicas for r in rows)} replicas ready"
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
                "served_qps": round(summary.served_qps, 3) if summary else 0.0,
                "effective_accuracy": (
                    round(summary.effective_accuracy, 3)
                    if summary and summary.effective_accuracy is not None
                    else None
                ),
                "ready_replicas": ready_total,
                "plan": rows,
            }
        )
        plan_changed = [r.model_copy(update={"ready_replicas": 0}) for r in rows] != [
            r.model_copy(update={"ready_replicas": 0}) for r in prev.plan
        ]
        if plan_changed:
            status = status.model_copy(update={"last_plan_time": now})
            steps.extend(_plan_events(key, prev, status))
        if status != prev:
            steps.append(UpdateStatus(key, status))
        return steps

    # -- acting --------------------------------------------------------------------------------

    async def reconcile(
        self, world: World, demand: DemandView, actuator: Actuator, concurrency: int = 1
    ) -> ReconcileResult:
        """Decide, then apply the steps: in order within a service, services in parallel.

        Every service's make steps go first (one wave), then the rest of each service's steps.
        A failed step of a service (a worker that could not be created) holds back every
        "break" step of that service, so traffic never loses its old backends for a new one
        that does not exist. Other services go on. `concurrency` bounds how many services are
        worked on at once (an API server takes many requests in flight; a process actuator
        may want 1).

        The decision runs in a worker thread: planning 1,000 services takes about a second,
        and on the event loop it would stall kopf's watches, the health probe and `/metrics`
        for as long. `world` and `demand` must not change while it runs (the driver and the
        local runtime build or change them only between passes).
        """
        decision = await asyncio.to_thread(self.decide, world, demand)
        applied: list[Step] = []
        failed: list[tuple[Step, BaseException]] = []
        groups: dict[str, list[Step]] = {}
        for step in decision.steps:
            groups.setdefault(_service_of(step), []).append(step)
        # Two waves: first every service's "make" steps (new and grown worker groups, the
        # slowest to take effect: pods must start), then the rest of each service's steps.
        # The order within a service is the decision's.
        makes: dict[str, list[Step]] = {}
        rests: dict[str, list[Step]] = {}
        for svc, steps in groups.items():
            n = 0
            while n < len(steps) and _is_make(steps[n]):
                n += 1
            if n:
                makes[svc] = steps[:n]
            if n < len(steps):
                rests[svc] = steps[n:]
        blocked: set[str] = set()
        gate = asyncio.Semaphore(max(1, concurrency))

        async def run(svc: str, steps: list[Step]) -> None:
            async with gate:
                for step in steps:
                    breaking = isinstance(step, RemoveWorker | RemoveService) or (
                        isinstance(step, EnsureWorker) and step.phase == "break"
                    )
                    if breaking and svc in blocked:
                        continue
                    try:
                        await actuator.apply(step)
                    except Exception as exc:
                        log.warning("step %s failed: %s", type(step).__name__, exc)
                        failed.append((step, exc))
                        blocked.add(svc)
                        continue
                    applied.append(step)

        for wave in (makes, rests):
            if concurrency <= 1:
                for svc, steps in wave.items():
                    await run(svc, steps)
            else:
                await asyncio.gather(*(run(svc, steps) for svc, steps in wave.items()))
        return ReconcileResult(decision=decision, applied=applied, failed=failed)


def _is_make(step: Step) -> bool:
    return isinstance(step, EnsureWorker) and step.phase == "make"


def _service_of(step: Step) -> str:
    if isinstance(step, EnsureWorker):
        return step.spec.key.service
    if isinstance(step, RemoveWorker):
        return step.key.service
    return step.service


def _plan_events(
    service: str, prev: InferenceServiceStatus, new: InferenceServiceStatus
) -> list[Step]:
    """Events for the plan changes a user cares about, in words."""
    events: list[Step] = []
    old_acc, new_acc = prev.effective_accuracy, new.effective_accuracy
    if old_acc is not None and new_acc is not None and abs(new_acc - old_acc) > 1e-3:
        reason = "AccuracyScaledDown" if new_acc < old_acc else "AccuracyScaledUp"
        events.append(
            RecordEvent(
                service,
                "Normal",
                reason,
                f"effective accuracy {old_acc:g} -> {new_acc:g} for "
                f"{new.demand_qps or 0:g} req/s: "
                + ", ".join(f"{r.variant}@{r.pool} x{r.replicas}" for r in new.plan),
            )
        )
    old_n, new_n = sum(r.replicas for r in prev.plan), sum(r.replicas for r in new.plan)
    if old_n != new_n or {(r.variant, r.pool) for r in prev.plan} != {
        (r.variant, r.pool) for r in new.plan
    }:
        events.append(
            RecordEvent(
                service,
                "Normal",
                "ReplicasChanged",
                f"{old_n} -> {new_n} worker replicas: "
                + (", ".join(f"{r.variant}@{r.pool} x{r.replicas}" for r in new.plan) or "none"),
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
