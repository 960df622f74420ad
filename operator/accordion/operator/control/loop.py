"""The control loop: world view + demand -> plan -> desired state -> make-before-break steps.

One loop, three drivers: the kopf operator (`accordion.operator.handlers`), local mode
(`accordion.local.runtime`) and the simulator (`accordion.sim.driver`). This package knows no
kopf and no Kubernetes client; it is split along its seams:

* `world`: the inputs a driver keeps (`World`: services, pools, running worker groups with
  their ready replicas, applied routing, status; `DemandView`: smoothed demand per service);
* `steps`: what the loop asks for (`Step`s that say their service and phase) and the
  `Actuator` that carries them out (Kubernetes objects, processes, simulated replicas);
* this module: the decision (`ControlLoop.decide`): one plan for the whole cluster (services
  share pools), the desired state derived from it, and the ordered steps towards it;
* `status`: conditions, plan rows and events per service;
* `runner`: the step runner (`ControlLoop.reconcile` hands the steps to it);
* `timing`: the one set of default timings every driver uses; `triggers`: when demand calls
  for a pass before the periodic one (bursts) and when a change of demand is worth a new plan
  (hysteresis).

Order of the steps (make before break), every step idempotent:

1. `EnsureWorker` for new worker groups and groups that grow or change settings;
2. `ApplyRouting` per service: weights that follow the capacity of *ready* replicas, so a new
   backend takes traffic only as its replicas become ready;
3. only for a service whose routing is final (every planned replica ready, the routing in place
   and settled for `drain_s`, at least `MIN_SETTLE_S` and never in the pass that writes it):
   `EnsureWorker` with fewer replicas, and `RemoveWorker` for groups the plan no longer wants.
   Until then the old replicas keep serving;
4. `UpdateStatus` and `RecordEvent` (plan changes that matter, in words).

Re-running the loop on an unchanged world yields no steps (zero churn): the plan is kept while
the services, their demand and the pools are unchanged, and the planner is given the previous
plan as the current allocation, so that ties are broken towards what was decided before, not
towards whatever happens to run mid-transition.

A plan is applied only when the planner succeeded: a planner that raises, or whose first
(served) stage found no solution, leaves the last good plan in force (its workers and routing
stay exactly as they are) and every service says `Planned=False, PlanningFailed` with why. No
solver failure ever deletes a worker.

Cost at scale (a thousand services): the world's objects are treated as values (a change is a
new object, never a mutation in place), so a service whose inputs (its spec, plan rows, running
workers, routing, status and demand) equal those of a pass that found nothing to do for it is
skipped without recomputing its routing or status; the planner's per-service input is memoised
the same way (`planning.to_problem`). What remains per pass is the planner call itself, when
the problem changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accordion.operator.api import CapacityModelName, DevicePool, InferenceService
from accordion.operator.control.burst import (
    kept_spare,
    main_allocation,
    merge_spare,
    spare_allocation,
    spare_problem,
    status_spare_allocation,
)
from accordion.operator.control.burstiness import with_burstiness
from accordion.operator.control.cost import CostMeter
from accordion.operator.control.desired import (
    Routing,
    WorkerKey,
    WorkerSpec,
    devices_per_replica,
    service_routing,
    serving_replicas,
    spare_by_group,
    worker_specs,
)
from accordion.operator.control.idle import (
    IdleTracker,
    idle_demand,
    idle_problem,
    standby_routing,
)
from accordion.operator.control.partial import merge_partial, partial_problem
from accordion.operator.control.runner import run_steps
from accordion.operator.control.status import (
    invalid_status,
    invalid_steps,
    now_rfc3339,
    planning_failed_steps,
    service_status_steps,
    shortfall_reason,
)
from accordion.operator.control.steps import (
    Actuator,
    ApplyRouting,
    EnsureWorker,
    Phase,
    RecordEvent,
    RemoveService,
    RemoveWorker,
    Step,
    UpdateStatus,
)
from accordion.operator.control.swaps import (
    StartupMeter,
    SwapGate,
    additions_only,
    pays_back,
    swap_loss,
    swapped_replicas,
)
from accordion.operator.control.timing import DEFAULT_TIMINGS, Timings
from accordion.operator.control.triggers import ReplanGate
from accordion.operator.control.world import AppliedRouting, DemandView, RunningWorker, World
from accordion.operator.mig import cap_replicas, current_layouts, mig_slices, with_in_service
from accordion.operator.planning import ProblemBuild, ServiceMemo, base_demand_qps, to_problem
from accordion.operator.pools import available_devices
from accordion.solver import Allocation, Plan, PlannerSettings, PlanRow, Problem, ServicePlan

log = logging.getLogger(__name__)

Planner = Callable[[Problem], Plan]

_LAST = (1 << 62, 0)
"""The place in a pool's line of a service that waits for none of its devices."""
ROOM_REQUEUE_S = 0.5
"""After freeing devices for new replicas (`ControlLoop._make_room`), pass again this soon."""
ROLL_MAX_SHARE = 0.5
"""The rolling step (`ControlLoop._make_room`) takes a ready replica only if it holds at most
this share of its service's ready capacity: two equal replicas may roll one, but a service whose
one big replica serves beside a slow one (a few req/s on another pool) keeps it. Counted by
replicas instead ("never the last ready one"), such a roll left the service the slow replica
alone for a whole start-up: on the 1.5x trace t5 served 1.7 req/s of ~50 for 7 s while its
t5-base made room for a t5-small on the same GPU (`bench/proteus/NOTES.md`)."""

__all__ = [
    "Actuator",
    "AppliedRouting",
    "ApplyRouting",
    "ControlLoop",
    "Decision",
    "DemandView",
    "EnsureWorker",
    "LoopSettings",
    "Phase",
    "PlanningError",
    "ReconcileResult",
    "RecordEvent",
    "RemoveService",
    "RemoveWorker",
    "RunningWorker",
    "Step",
    "UpdateStatus",
    "World",
    "default_planner",
    "invalid_status",
]


class PlanningError(RuntimeError):
    """The planner gave no usable plan (it raised, or its first stage found no solution)."""


def default_planner(problem: Problem) -> Plan:
    """The OR-Tools planner of `accordion.solver.planner` (imported on first use)."""
    from accordion.solver.planner import plan

    return plan(problem)


@dataclass(frozen=True)
class LoopSettings:
    """Knobs of the loop (the planner's own knobs are `planner`)."""

    planner: PlannerSettings = field(default_factory=PlannerSettings)
    drain_s: float = DEFAULT_TIMINGS.drain_s
    """How long a final routing must have been in place before old replicas are removed
    (routers pick a new table up with some delay)."""
    hysteresis: float = DEFAULT_TIMINGS.hysteresis
    """The band of each service's planned estimate (`triggers.ReplanGate`)."""
    burst_buffer: bool = True
    """Plan spare replicas on idle devices for services that want them (`burst`)."""
    defer_swaps: bool = True
    """A plan for rising demand that swaps models on full pools waits until the rise has
    lasted a start-up, and a plan that swaps for served demand must pay back (`swaps`)."""
    swap_payback_s: float = DEFAULT_TIMINGS.swap_payback_s
    """Within how long a plan's gain in served demand must make up for what its model swaps
    leave unserved while they start (`swaps.pays_back`)."""

    @classmethod
    def from_timings(cls, timings: Timings, planner: PlannerSettings | None = None) -> LoopSettings:
        return cls(
            planner=planner or PlannerSettings(),
            drain_s=timings.drain_s,
            hysteresis=timings.hysteresis,
            swap_payback_s=timings.swap_payback_s,
        )


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
    """The planner failed in this pass; `plan` is the last good plan (or None), still applied."""


@dataclass
class ReconcileResult:
    decision: Decision
    applied: list[Step]
    failed: list[tuple[Step, BaseException]]


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


MIN_SETTLE_S = 0.1
"""The shortest time a final routing is in place before old workers go, whatever `drain_s`
says: with a drain of 0 the break went out in the pass that wrote the table, and in the pass
that found the routers yet to confirm it (`reports.Reports.confirmed` says "in place now"
then), before any router had it."""

CLOCK_TOLERANCE_S = 1e-9
"""Waits shorter than this are over: a wait computed as a difference of clock readings (the
drain: drain_s - (now - applied at)) can come out a rounding error above zero when its time has
come, and a requeue that short would re-run the pass at the same instant, forever on a
simulated clock."""


def _tolerance_qps(demand_qps: float) -> float:
    """Capacity within this of a service's demand counts as serving it (the planner's rates
    are floats: a millionth of the demand, and of 1 req/s at low rates)."""
    return 1e-6 * max(1.0, demand_qps)


def _short(plan: Plan) -> set[str]:
    """The services a plan cannot serve in full."""
    return {s.service for s in plan.services if s.unserved_qps > _tolerance_qps(s.demand_qps)}


def _waiting(new: Plan, in_force: Plan) -> set[str]:
    """Services `in_force` leaves short of `new`'s demand for them, that `new` serves better
    (a deferred plan's waiting services, `swaps.SwapGate.wait`)."""
    have = {s.service: s.capacity_qps for s in in_force.services}
    return {
        s.service
        for s in new.services
        if have.get(s.service, 0.0) < s.demand_qps - _tolerance_qps(s.demand_qps)
        and s.capacity_qps > have.get(s.service, 0.0) + _tolerance_qps(s.demand_qps)
    }


def _replica_capacity(spec: WorkerSpec) -> float:
    """The ready capacity a service loses when one replica of this group goes: a pipeline
    stage's replica takes its whole pipeline replica (every stage's devices of it) along."""
    return spec.capacity_qps_per_replica * devices_per_replica(spec)


def _usable(plan: Plan) -> str | None:
    """Why a plan must not be applied, or None when it may."""
    if plan.stats.status == "NO_SOLUTION":
        return f"the planner found no solution ({plan.stats.solver}, {plan.stats.status})"
    return None


class ControlLoop:
    """The control loop shared by every driver (see the module docstring).

    Keep one instance per driver: it remembers the last problem and plan (so an unchanged world
    is not re-planned and ties are broken towards the previous decision).
    """

    def __init__(
        self,
        settings: LoopSettings | None = None,
        planner: Planner = default_planner,
        clock: Callable[[], float] = time.time,
        url_for: Callable[[str], str | None] = lambda service: None,
    ) -> None:
        self.settings = settings or LoopSettings()
        self.planner = planner
        self.clock = clock
        self.url_for = url_for
        """A service's endpoint (`status.url`): the router's Service, or its local port."""
        self.last_problem: Problem | None = None
        self.last_plan: Plan | None = None
        """The last good plan (the one in force)."""
        self.last_error: str | None = None
        """Why the last planner call failed; None after a success."""
        self.plan_time_s: float = 0.0
        """Wall time of the last planner call (for benchmarks and status)."""
        self.decide_time_s: float = 0.0
        """Wall time of the last `decide` (planning included)."""
        self._failed_problem: Problem | None = None
        self.gate = ReplanGate(self.settings.hysteresis)
        self.notices: dict[str, list[str]] = {}
        """What planning left out, per service (`planning.ProblemBuild.by_service`)."""
        self.overload = False
        """The plan in force was made without headroom and margin: the cluster is short."""
        self.previous_plan: Plan | None = None
        """The plan that was in force before `last_plan` (what runs may still be its)."""
        self.spare_time_s: float = 0.0
        """Wall time of the last spare-plan call."""
        self.partial_services: int | None = None
        """Services the last new plan planned when it was a partial one (`partial`), else None."""
        self._spec_memo: ServiceMemo = {}
        self._targets_memo: dict[str, tuple[Any, dict[WorkerKey, WorkerSpec]]] = {}
        self._line: dict[WorkerKey, tuple[int, int]] = {}
        """Worker groups whose new replicas wait for a device, by when they were asked for (pass,
        order of the steps within it): the order in which a full pool's freed devices go to
        them (`_make_room`)."""
        self._line_since: dict[WorkerKey, float] = {}
        """When each group of `_line` joined it (the loop's clock)."""
        self.device_waits: dict[str, dict[str, int]] = {}
        """Per service and pool, its new replicas that wait for a device of a full pool after
        this pass (`_make_room`; the status's Ready condition names them)."""
        self._room_passes = 0
        self._settled: dict[str, _Settled] = {}
        self._current_memo: tuple[Plan, list[Allocation]] | None = None
        self.idle = IdleTracker()
        """Which `minReplicas: 0` services are idle (scale to zero, `idle`)."""
        self._planned_idle: frozenset[str] = frozenset()
        self.startup = StartupMeter()
        """How long new replicas take to become ready, per service (`swaps`)."""
        self.swap_gate = SwapGate()
        """Since when demand rises per service; plans whose swaps wait (`swaps`)."""
        self.cost = CostMeter()
        """Device-seconds, cost and cost per 1,000 requests per service (`cost`)."""
        self._slices: dict[str, int] = {}
        """MIG slices that exist per slice sub-pool (`mig.slice_devices`)."""
        self._caps: dict[WorkerKey, int] = {}
        """Replicas a worker group on MIG slices may have now (`mig.cap_replicas`)."""

    # -- planning ------------------------------------------------------------------------------

    def _current(self, world: World) -> list[Allocation]:
        """What the planner should avoid changing: the previous plan, or what runs at start."""
        if self.last_plan is not None:
            if self._current_memo is None or self._current_memo[0] is not self.last_plan:
                self._current_memo = (self.last_plan, main_allocation(self.last_plan))
            return [a for a in self._current_memo[1] if a.service in world.services]
        # At start, what runs less the spare replicas the statuses record (a restart must not
        # plan the burst buffer's replicas as planned ones, and then spare ones elsewhere).
        spare = {
            (a.service, a.variant, a.pool, a.pipeline): a.replicas
            for a in status_spare_allocation(world.status.items())
        }
        running = [
            Allocation(
                service=k.service,
                variant=k.variant,
                pool=k.pool,
                # A pipeline runs as its first stage's replicas over its devices per replica.
                replicas=w.spec.replicas // devices_per_replica(w.spec),
                pipeline=k.pipeline,
            )
            for k, w in sorted(world.workers.items(), key=lambda kv: kv[0].sort_key())
            if k.service in world.services
            and not k.stage  # a pipeline's later stages are part of its first's allocation
            and any(v.name == k.variant for v in world.services[k.service].spec.variants)
        ]
        return [
            a.model_copy(update={"replicas": n})
            for a in running
            if (n := a.replicas - spare.get((a.service, a.variant, a.pool, a.pipeline), 0)) > 0
        ]

    @staticmethod
    def _same(a: Problem | None, b: Problem) -> bool:
        # `current` is left out: it is the last plan itself, so it changes after every plan
        # change; re-planning for that alone would cost a planner call for nothing.
        return (
            a is not None
            and a.pools == b.pools
            and a.services == b.services
            and a.settings == b.settings
        )

    def capacity_by_service(self) -> dict[str, float]:
        """Planned capacity per service in the plan in force (spare replicas left out)."""
        plan = self.last_plan
        return {s.service: s.capacity_qps for s in plan.services} if plan is not None else {}

    def short_services(self) -> set[str]:
        """Services the plan in force cannot serve in full."""
        plan = self.last_plan
        if plan is None:
            return set()
        return _short(plan)

    def _measured(self, world: World, demand: DemandView) -> dict[str, float]:
        measured = {k: v for k, v in demand.qps.items() if k in world.services}
        idle = self.idle.update(
            world.services, measured, demand.last_arrival_s, self.clock(), demand.cold_start_s
        )
        return idle_demand(measured, idle)

    def pass_due(self, world: World, demand: DemandView) -> list[str]:
        """Services whose demand estimate left the band of their plan (`triggers`): a driver
        runs a pass at once when this is not empty, instead of waiting for its periodic one."""
        headroom = {k: s.spec.demand.headroom for k, s in world.services.items()}
        due = self.gate.due(self._measured(world, demand), self.capacity_by_service(), headroom)
        # A service that went idle, or has a request again, is planned at once (scale to zero);
        # one a deferred plan leaves short is planned again until that plan goes (`swaps`).
        waiting = self.swap_gate.waiting_since.keys()
        return sorted({*due, *(self.idle.idle_now ^ self._planned_idle), *waiting})

    def waking(self) -> list[str]:
        """Services planned at zero replicas that have demand again, as of the last `pass_due`:
        their requests wait in the routers' activators, so a driver plans for them at once."""
        return sorted(self._planned_idle - self.idle.idle_now)

    def make_plan(self, world: World, demand: DemandView) -> tuple[Plan, bool, list[str]]:
        """The plan for the whole cluster; re-uses the last one when the problem is unchanged.

        Each service is planned for its estimate within the hysteresis band (`triggers`) plus
        its headroom. When that plan is short of capacity for some service, the cluster is
        planned again without headroom (in overload, headroom would take devices from demand
        that is there). Devices the plan leaves idle then get spare replicas (`burst`).

        Raises `PlanningError` when the planner fails (the last good plan stays in force)."""
        headroom = {k: s.spec.demand.headroom for k, s in world.services.items()}
        measured, capacity = self._measured(world, demand), self.capacity_by_service()
        self._observe_swaps(world, measured, capacity, headroom)
        estimates = self._waiting_estimates(
            self.gate.estimates(measured, capacity, headroom), measured
        )
        build = self._build(world, estimates, demand)
        self.notices = build.by_service
        self._planned_idle = self.idle.idle_now
        if self.last_plan is not None and self._same(self.last_problem, build.problem):
            self.swap_gate.wait((), self.clock())
            return self.last_plan, False, build.warnings
        # A new plan: every service gets at least its current estimate (`ReplanGate`).
        estimates = self._waiting_estimates(
            self.gate.estimates(measured, capacity, headroom, replanning=True), measured
        )
        build = self._build(world, estimates, demand)
        if self.last_error is not None and self._same(self._failed_problem, build.problem):
            raise PlanningError(self.last_error)  # the same problem fails the same way
        started = time.perf_counter()
        try:
            plan = self._full_plan(build.problem, world, estimates)
        except PlanningError as exc:
            self._fail(build.problem, str(exc))
            raise
        finally:
            self.plan_time_s = time.perf_counter() - started
        devices = self._devices_in_force(world, build.problem)
        if self.last_plan is not None and self._swaps_wait(plan, build.problem, devices):
            # Swaps that would not pay back yet: the additions on free devices go now; the
            # rest is planned again at the next pass (the planned estimates stay).
            partial = additions_only(plan, self.last_plan, devices)
            self.swap_gate.wait(_waiting(plan, partial or self.last_plan), self.clock())
            if partial is None:
                return self.last_plan, False, build.warnings
            partial = self._with_spare(partial, build.problem, world, demand, estimates)
            self.previous_plan, self.last_plan = self.last_plan, partial
            return partial, True, build.warnings
        plan = self._with_spare(plan, build.problem, world, demand, estimates)
        self.previous_plan = self.last_plan
        self.swap_gate.wait((), self.clock())
        self.last_problem, self.last_plan, self.last_error = build.problem, plan, None
        self._failed_problem = None
        # The planned estimates: the measured ones, and the spec's qps where nothing is measured
        # yet, so that a first measurement inside the band keeps the plan (`triggers`).
        self.gate.adopt(
            {k: base_demand_qps(svc, estimates) for k, svc in world.services.items()},
            guessed=(k for k in world.services if k not in estimates),
        )
        return plan, True, build.warnings

    def _waiting_estimates(
        self, estimates: dict[str, float], measured: Mapping[str, float]
    ) -> dict[str, float]:
        """`estimates` with each service a deferred plan leaves waiting (`swaps`) planned for
        at least its estimate: inside its band it would be planned for the estimate of the last
        adopted plan, and that plan's problem would come back unchanged."""
        for svc in self.swap_gate.waiting_since:
            if svc in estimates and svc in measured:
                estimates[svc] = max(estimates[svc], measured[svc])
        return estimates

    def _observe_swaps(
        self,
        world: World,
        measured: Mapping[str, float],
        capacity: Mapping[str, float],
        headroom: Mapping[str, float],
    ) -> None:
        """Feed `swaps`: new replicas' start-up times, and which services' demand rises."""
        now_s = self.clock()
        self.startup.observe(world.workers, now_s)
        due = self.gate.due(measured, capacity, headroom)
        planned, guessed = self.gate.planned, self.gate.first_readings(measured, due)
        self.swap_gate.observe(
            (s for s in due if s in planned and s not in guessed and measured[s] > planned[s]),
            now_s,
        )

    def _devices_in_force(self, world: World, problem: Problem) -> dict[str, int]:
        """The devices each pool a plan row can name has while the plan in force stays: a
        whole pool's, and a MIG pool's slices in service (`mig.mig_slices`: from the Nodes
        where the driver watches them, else the plan's layouts). Rows of a MIG pool name its
        slice sub-pools; counted as whole pools only, every replica added on a slice was a
        swap, and the gate deferred re-plans that only used free slices."""
        return {p.name: p.devices for p in problem.pools} | mig_slices(world, self.last_plan)

    def _swaps_wait(self, plan: Plan, problem: Problem, devices: Mapping[str, int]) -> bool:
        """Whether a new plan for rising demand waits because its model swaps would not pay
        back yet (`swaps.SwapGate`); only when demand alone changed. `devices`:
        `_devices_in_force`."""
        if not self.settings.defer_swaps:
            return False
        old = self.last_problem
        if old is None or self.last_plan is None:
            return False
        swaps = swapped_replicas(plan, self.last_plan, devices)
        if swaps <= 0:
            return False
        demand_only = (
            old.pools == problem.pools
            and old.settings == problem.settings
            and [s.model_copy(update={"demand_qps": 0.0}) for s in old.services]
            == [s.model_copy(update={"demand_qps": 0.0}) for s in problem.services]
        )
        if not demand_only:
            return False
        if self.swap_gate.defer(swaps, self.startup, self.clock()):
            return True
        if not _short(plan):
            return False  # served in full: headroom and spare replicas absorb a start-up
        loss = swap_loss(plan, self.last_plan, devices, self.startup)
        # A gain within the planner's gap goal is a tie (its swaps are for accuracy).
        tolerance = problem.settings.relative_gap * sum(s.demand_qps for s in problem.services)
        if pays_back(
            plan.stats.gain_over_current_qps, loss, self.settings.swap_payback_s, tolerance
        ):
            return False
        self.swap_gate.hold_unpaid()
        return True

    def _build(
        self, world: World, estimates: Mapping[str, float], demand: DemandView
    ) -> ProblemBuild:
        build = to_problem(
            world.services.values(),
            world.pools.values(),
            measured_qps=estimates,
            current=self._current(world),
            settings=self.settings.planner,
            memo=self._spec_memo,
            available_devices=(
                None
                if world.nodes is None
                else available_devices(world.pools.values(), world.nodes)
            ),
            mig_current=(
                None if world.nodes is None else current_layouts(world.pools.values(), world.nodes)
            ),
        )
        build.problem = idle_problem(build.problem, self.idle.idle_now)
        if world.nodes is not None:  # MIG GPUs out of service take no replicas (`mig`)
            build.problem = with_in_service(
                build.problem, world.pools.values(), world.nodes, self.last_plan
            )
        # Measured burstiness: capacity from the batching model (`burstiness`), for the
        # services that ask for it (spec.demand.capacityModel: Batching).
        batching = {
            k: b
            for k, b in demand.burstiness.items()
            if k in world.services
            and world.services[k].spec.demand.capacity_model is CapacityModelName.BATCHING
        }
        build.problem = with_burstiness(build.problem, batching)
        return build

    def _full_plan(self, problem: Problem, world: World, estimates: Mapping[str, float]) -> Plan:
        """The whole cluster's plan. When it is short for some services, they are planned
        again without their headroom and utilization margin (in overload, headroom and margin
        are devices taken from demand that is there). Services that are served in full keep
        theirs: one tenant's overload never rewrites another's workers. On large problems a
        pass that changed few services plans only those, when that serves them (`partial`)."""
        partial = (
            None
            if self.swap_gate.waiting_since
            else partial_problem(problem, self.last_plan, self.last_problem, self.short_services())
        )
        if partial is not None:
            try:
                sub: Plan | None = self._call_planner(partial.problem)
            except PlanningError:
                sub = None  # the whole cluster's plan below says whether it fails too
            if sub is not None and not _short(sub):
                self.overload = False
                self.partial_services = len(partial.problem.services)
                return merge_partial(partial, sub)
        self.partial_services = None
        plan = self._call_planner(problem)
        short = _short(plan)
        self.overload = bool(short)
        if short:
            base = {k: base_demand_qps(svc, estimates) for k, svc in world.services.items()}
            plain = problem.model_copy(
                update={
                    "services": [
                        s.model_copy(
                            update={
                                "demand_qps": base.get(s.name, s.demand_qps),
                                "utilization": 1.0,
                            }
                        )
                        if s.name in short
                        else s
                        for s in problem.services
                    ]
                }
            )
            plan = self._call_planner(plain)
        return plan

    def _call_planner(self, problem: Problem) -> Plan:
        """The planner's plan, or `PlanningError` (it raised, or found no solution)."""
        try:
            plan = self.planner(problem)
        except Exception as exc:  # the planner must never take the operator down
            log.exception("planning failed")
            raise PlanningError(f"planning failed: {exc}") from exc
        why = _usable(plan)
        if why is not None:
            log.warning("not applying the plan: %s", why)
            raise PlanningError(why)
        return plan

    def _with_spare(
        self,
        plan: Plan,
        problem: Problem,
        world: World,
        demand: DemandView,
        estimates: Mapping[str, float],
    ) -> Plan:
        """The plan with spare replicas on the devices it leaves idle (`burst`), if any."""
        if not self.settings.burst_buffer:
            return plan
        burst: dict[str, float] = {}
        for key, svc in world.services.items():
            fraction = svc.spec.demand.burst.fraction(demand.burst.get(key))
            if fraction > 0:
                burst[key] = base_demand_qps(svc, estimates) * fraction
        in_force = (
            spare_allocation(self.last_plan)
            if self.last_plan is not None
            else status_spare_allocation(world.status.items())  # at start: what runs
        )
        kept = kept_spare(problem, plan, burst, self.last_plan, self.last_problem)
        spare = spare_problem(problem, plan, burst, in_force, kept)

        def without_spare_plan() -> Plan:
            """The kept spare rows alone (the plan as it is when none is kept)."""
            return merge_spare(plan, None, kept) if kept else plan

        if spare is None:
            self.spare_time_s = 0.0
            return without_spare_plan()
        started = time.perf_counter()
        try:
            spare_plan = self._call_planner(spare)
        except PlanningError as exc:
            log.warning("no spare replicas this time: %s", exc)
            return without_spare_plan()
        finally:
            self.spare_time_s = time.perf_counter() - started
        return merge_spare(plan, spare_plan, kept)

    def _fail(self, problem: Problem, message: str) -> None:
        self.last_error, self._failed_problem = message, problem

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
        self.cost.observe(world, demand, now_s)
        error: str | None = None
        warnings: list[str] = []
        try:
            plan, planned, warnings = self.make_plan(world, demand)
        except PlanningError as exc:
            error = str(exc)
            if self.last_plan is None:
                return Decision(
                    plan=None,
                    targets={},
                    routing={},
                    steps=planning_failed_steps(world, error, now_s),
                    planned=False,
                    error=error,
                )
            # Keep the last good plan in force: the same workers and routing as before.
            plan, planned = self.last_plan, False
        # Group once: per-service work below must not scan the whole cluster (n services).
        rows_by: dict[str, list[PlanRow]] = {}
        for row in plan.rows:
            if row.replicas > 0:
                rows_by.setdefault(row.service, []).append(row)
        summaries = {s.service: s for s in plan.services}
        targets: dict[WorkerKey, WorkerSpec] = {}
        for svc_key, svc in sorted(world.services.items()):
            targets.update(
                self._targets(svc_key, svc, tuple(rows_by.get(svc_key, ())), world.pools)
            )
        # Devices for new replicas in full pools: old replicas that go now (`_make_room`). The
        # rest of the pass sees the world without them, so that routing follows the capacity
        # that remains.
        # MIG slices: workers are placed only on slices that exist (`mig`).
        self._slices = mig_slices(world, plan)
        self._caps = cap_replicas(
            {k: (k.pool, s.replicas) for k, s in targets.items()}, self._slices
        )
        release = self._make_room(world, targets, summaries, spare_by_group(plan.rows))
        room: dict[str, list[Step]] = {}
        if release:
            workers = dict(world.workers)
            for key, n in sorted(release.items(), key=lambda kv: kv[0].sort_key()):
                have = world.workers[key]
                left = have.spec.replicas - n
                if left <= 0 and key not in targets:
                    room.setdefault(key.service, []).append(RemoveWorker(key))
                    del workers[key]
                    continue
                spec = have.spec.with_replicas(max(0, left))
                room.setdefault(key.service, []).append(
                    EnsureWorker(spec, exists=True, stage="break")
                )
                workers[key] = RunningWorker(spec, min(have.ready_replicas, spec.replicas))
            world = dataclasses.replace(world, workers=workers)
        running_by: dict[str, dict[WorkerKey, RunningWorker]] = {}
        for key, worker in world.workers.items():
            running_by.setdefault(key.service, {})[key] = worker

        outcomes: dict[str, _ServiceOutcome] = {}
        requeue: float | None = ROOM_REQUEUE_S if room else None
        for svc_key, svc in sorted(world.services.items()):
            rows = tuple(rows_by.get(svc_key, ()))
            svc_targets = self._targets(svc_key, svc, rows, world.pools)
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
                error,
                tuple(self.notices.get(svc_key, ())),
                tuple(
                    sorted(
                        (k.sort_key(), f)
                        for k, f in world.worker_failures.items()
                        if k.service == svc_key
                    )
                ),
                self.cost.published.get(svc_key),
                demand.cold_start_s.get(svc_key),
                self._prewarm(svc_key),
                tuple(
                    sorted((k.sort_key(), c) for k, c in self._caps.items() if k.service == svc_key)
                ),
                tuple(sorted(self.device_waits.get(svc_key, {}).items())),
            )
            memo = self._settled.get(svc_key)
            if memo is not None and memo.inputs == inputs:
                outcomes[svc_key] = _ServiceOutcome(routing=memo.routing)
                continue
            outcome = self._decide_service(
                svc_key, svc, rows, svc_targets, inputs[3], world, demand, summaries, now_s, error
            )  # The room's breaks go out after the service's routing (which no longer counts them).
            outcome.route.extend(room.get(svc_key, []))

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
            owned = tuple(sorted(running_by.get(svc_key, {}), key=WorkerKey.sort_key))
            steps.append(RemoveService(svc_key, owned))
        for o in outcomes.values():
            steps.extend(o.status)
        steps.extend(invalid_steps(world, now_rfc3339(now_s)))
        return Decision(
            plan=plan,
            targets=targets,
            routing={k: o.routing for k, o in outcomes.items()},
            steps=steps,
            planned=planned,
            requeue_after_s=requeue,
            warnings=warnings,
            error=error,
        )

    def _pool_devices(self, world: World) -> dict[str, int]:
        problem = self.last_problem
        if problem is not None:
            return {p.name: p.devices for p in problem.pools} | self._slices
        return {name: p.spec.devices for name, p in world.pools.items()} | self._slices

    def _make_room(
        self,
        world: World,
        targets: Mapping[WorkerKey, WorkerSpec],
        summaries: Mapping[str, ServicePlan],
        plan_spare: Mapping[WorkerKey, int] | None = None,
    ) -> dict[WorkerKey, int]:
        """How many replicas of which old worker groups go now, to free the devices that new
        replicas need (see `ROOM_REQUEUE_S`); `plan_spare` counts the plan's spare (burst)
        replicas per worker group.

        Make before break keeps the old replicas until the new ones are ready; but a new
        replica needs a device of its own (Kubernetes schedules one pod per GPU), so where a
        pool has fewer free devices than the plan's new replicas need, they would wait for the
        old ones, and the old ones for them. The plan fits its pool, so the old replicas it no
        longer wants free enough devices. They go in this order, as many as the new replicas
        need: replicas that are not ready, spare (burst) replicas and replicas whose service
        keeps enough ready capacity for its planned demand without them (least accurate
        first); and last, replicas whose service needs them, but only one per pool at a time,
        only while nothing else in the pool is starting, and never one that holds more than
        half of its service's ready capacity (`ROLL_MAX_SHARE`; so never a service's last
        ready one): a rolling update that loses one replica's capacity for one model load, not
        a whole pool's or (nearly) a whole service's. That one is of the service whose new
        replica is first in line for the device it frees (`_waiting_line`): a freed device
        goes to the pool's longest-waiting replica, so rolling another service's replica took
        that service's capacity away until its own new replicas' turn came (on the bursty
        trace, mobilenet with 243-347 req/s ready against an estimate of 405 for 7 s while
        efficientnet's new replicas took the devices its rolls freed). A new spare (burst)
        replica never makes a replica roll: it serves only what the routed replicas cannot, so
        it takes devices that come free otherwise (`plan_spare`; at the bursty trace's first
        burst mobilenet, 146 req/s ready against 384 arriving, rolled one of its three
        replicas for the device a spare asked for, and served 97 req/s for a model load).

        A pipeline serves only as whole pipeline replicas, ready in every stage
        (`desired.pipeline_view`): its ready capacity is theirs, a stage's ready replicas
        beyond them serve nothing and go first (with the replicas that are not ready), and
        one replica of a stage that goes takes a whole pipeline replica's capacity with it.
        (Counted at the first stage's ready replicas, a pipeline whose later stage had rolled
        still held its first stage's device as the service's "last ready" capacity, while it
        served nothing: the new pipeline waited for that device, and the service served
        nothing until the next plan.)"""
        devices = self._pool_devices(world)
        before = self.previous_plan
        spare_before = spare_by_group(before.rows if before is not None else [])
        asked: dict[str, int] = {}
        pool_running: dict[str, int] = {}
        pool_unready: dict[str, int] = {}
        ready_capacity: dict[str, float] = {}
        serving = serving_replicas(
            {k: w.spec for k, w in world.workers.items()},
            {k: w.ready_replicas for k, w in world.workers.items()},
        )
        for key, worker in world.workers.items():
            want = targets[key].replicas if key in targets else 0
            asked[key.pool] = asked.get(key.pool, 0) + max(want, worker.spec.replicas)
            pool_running[key.pool] = pool_running.get(key.pool, 0) + worker.spec.replicas
            pool_unready[key.pool] = pool_unready.get(key.pool, 0) + max(
                0, worker.spec.replicas - worker.ready_replicas
            )
            if not key.stage:  # a pipeline's capacity counts once, at its first stage
                ready_capacity[key.service] = ready_capacity.get(key.service, 0.0) + (
                    serving[key] * worker.spec.capacity_qps_per_replica
                )
        waiting = dict(pool_unready)
        spare_waiting: dict[str, int] = {}  # new spare replicas per pool (none roll for them)
        plan_spare = plan_spare or {}
        for key, spec in targets.items():
            have = world.workers.get(key)
            grow = spec.replicas - (have.spec.replicas if have else 0)
            if have is None:
                asked[key.pool] = asked.get(key.pool, 0) + spec.replicas
            if grow > 0:
                waiting[key.pool] = waiting.get(key.pool, 0) + grow
                spare_waiting[key.pool] = spare_waiting.get(key.pool, 0) + min(
                    grow, plan_spare.get(key, 0)
                )
        # Replicas that have a device and are starting: not ready, and not waiting for one.
        starting = {
            pool
            for pool, n in pool_unready.items()
            if n - max(0, pool_running[pool] - devices.get(pool, 0)) > 0
        }
        head = self._waiting_line(world, targets)
        first: dict[str, tuple[int, int]] = {}  # per pool, the place of the first in its line
        for (pool, _), place in head.items():
            first[pool] = min(place, first.get(pool, _LAST))
        overdue = self._overdue(first)
        release: dict[WorkerKey, int] = {}
        rolled_services: set[str] = set()
        for pool, n_asked in sorted(asked.items()):
            # Only replicas that wait for a device need one freed (every ready one has one).
            deficit = min(n_asked - devices.get(pool, 0), waiting.get(pool, 0))
            if deficit <= 0:
                continue
            candidates: list[tuple[int, float, str, WorkerKey, int]] = []
            for key, worker in world.workers.items():
                if key.pool != pool:
                    continue
                target = targets.get(key)
                surplus = worker.spec.replicas - (target.replicas if target else 0)
                if surplus <= 0:
                    continue
                # Not ready, or ready in a pipeline replica that is not (serving nothing).
                unready = min(surplus, worker.spec.replicas - serving[key])
                spare = min(surplus - unready, spare_before.get(key, 0))
                routed = surplus - unready - spare
                for rank, n in ((0, unready), (1, spare), (2, routed)):
                    if n > 0:
                        candidates.append((rank, worker.spec.accuracy, key.service, key, n))
            candidates.sort(key=lambda c: (c[0], c[1], c[2], c[3].sort_key()))
            rolls: list[tuple[tuple[int, int], int, str, WorkerKey, float]] = []
            held: set[str] = set()  # could roll here, but rolled in another pool this pass
            for order, (rank, _, service, key, n) in enumerate(candidates):
                if deficit <= 0:
                    break
                per_replica = _replica_capacity(world.workers[key].spec)
                take = min(n, deficit)
                if rank > 0:
                    # Ready replicas go only while their service keeps enough ready capacity
                    # for its planned demand; else one, as the pool's rolling step (below).
                    summary = summaries.get(service)
                    wanted = summary.demand_qps if summary is not None else 0.0
                    ready = ready_capacity.get(service, 0.0)
                    left = ready - wanted
                    harmless = int(left // per_replica) if per_replica > 0 else take
                    take = min(take, max(0, harmless))
                    keeps = (
                        ready - per_replica > 1e-9 and per_replica <= ROLL_MAX_SHARE * ready + 1e-9
                    ) or (pool, service) in overdue
                    if take <= 0 and keeps and pool not in starting:
                        if service in rolled_services:
                            held.add(service)
                        else:
                            place = head.get((pool, service), _LAST)
                            rolls.append((place, order, service, key, per_replica))
                if take <= 0:
                    continue
                release[key] = release.get(key, 0) + take
                if rank > 0:  # replicas that serve nothing cost no ready capacity
                    ready_capacity[service] = ready_capacity.get(service, 0.0) - take * per_replica
                deficit -= take
            if deficit - spare_waiting.get(pool, 0) > 0 and rolls:
                # The rolling step: one replica of the service whose new replica is first in
                # line for the device it frees, so that the service loses one replica's
                # capacity for one model load, not until its own new replicas' turn comes.
                # If that service already rolled in another pool this pass, nobody rolls here:
                # the device would go to it all the same, at another service's cost; it rolls
                # at the next pass (`ROOM_REQUEUE_S`).
                head_place = first.get(pool, _LAST)
                if min(rolls)[0] != head_place and any(
                    head.get((pool, h)) == head_place for h in held
                ):
                    continue
                _, _, service, key, per_replica = min(rolls)
                release[key] = release.get(key, 0) + 1
                rolled_services.add(service)
                ready_capacity[service] = ready_capacity.get(service, 0.0) - per_replica
        self.device_waits = self._device_waits(world, targets, asked, release, devices)
        return release

    def _device_waits(
        self,
        world: World,
        targets: Mapping[WorkerKey, WorkerSpec],
        asked: Mapping[str, int],
        release: Mapping[WorkerKey, int],
        devices: Mapping[str, int],
    ) -> dict[str, dict[str, int]]:
        """Per service and pool, the replicas that wait for a device after this pass: a pool
        that holds more replicas than devices once this pass's releases have gone leaves the
        ones asked for last without one (the scheduler binds in creation order, `_line`)."""
        gone: dict[str, int] = {}
        for key, n in release.items():
            gone[key.pool] = gone.get(key.pool, 0) + n
        out: dict[str, dict[str, int]] = {}
        for pool, n_asked in asked.items():
            left = n_asked - gone.get(pool, 0) - devices.get(pool, 0)
            line = sorted((place, k) for k, place in self._line.items() if k.pool == pool)
            for _, key in reversed(line):
                if left <= 0:
                    break
                have = world.workers.get(key)
                target = targets[key].replicas if key in targets else 0
                unready = target - (have.ready_replicas if have is not None else 0)
                n = min(left, max(0, unready))
                if n > 0:
                    per_pool = out.setdefault(key.service, {})
                    per_pool[pool] = per_pool.get(pool, 0) + n
                    left -= n
        return out

    def _overdue(self, first: Mapping[str, tuple[int, int]]) -> set[tuple[str, str]]:
        """(pool, service) pairs whose service is first in the pool's line (`first`: per pool,
        the place of the first in its line) and has waited there longer than a swap must pay
        back in (`LoopSettings.swap_payback_s`): the rolling step may then take the replica it
        protects (the service's last ready one, or one holding most of its capacity). Without
        this a service whose one device holds its old variant never got the new one while the
        plan asked for it (a one-GPU service swapping models at a rise of demand waited for
        good, short all the while)."""
        now = self.clock()
        out: set[tuple[str, str]] = set()
        for k, place in self._line.items():
            if (
                place == first.get(k.pool)
                and now - self._line_since.get(k, now) >= self.settings.swap_payback_s
            ):
                out.add((k.pool, k.service))
        return out

    def _waiting_line(
        self, world: World, targets: Mapping[WorkerKey, WorkerSpec]
    ) -> dict[tuple[str, str], tuple[int, int]]:
        """Keep `_line` (groups with replicas not ready, by when they were asked for) and
        return, per (pool, service), the place of the service's first group in its pool's line.

        A full pool's pending replicas get freed devices in the order they were created (the
        scheduler's queue: same priority, then creation time; the simulator's pool queue), and
        the loop creates them in its steps' order: by pass, then by service and group."""
        self._room_passes += 1
        waiting = sorted(
            (
                k
                for k, spec in targets.items()
                if spec.replicas > (world.workers[k].ready_replicas if k in world.workers else 0)
            ),
            key=lambda k: (k.service, k.sort_key()),
        )
        line = {k: self._line.get(k, (self._room_passes, i)) for i, k in enumerate(waiting)}
        self._line = line
        now = self.clock()
        self._line_since = {k: self._line_since.get(k, now) for k in line}
        head: dict[tuple[str, str], tuple[int, int]] = {}
        for k, place in line.items():
            if place < head.get((k.pool, k.service), _LAST):
                head[(k.pool, k.service)] = place
        return head

    def _targets(
        self,
        svc_key: str,
        svc: InferenceService,
        rows: tuple[PlanRow, ...],
        pools: Mapping[str, DevicePool],
    ) -> dict[WorkerKey, WorkerSpec]:
        """The service's worker groups (`desired.worker_specs`), re-used while inputs are equal."""
        used = [p for r in rows for p in [st.pool for st in r.stages] or [r.pool]]
        # A MIG slice sub-pool's workers depend on its pool (`mig.slice_device_pool`).
        key = (svc, rows, tuple(pools.get(p.partition("/")[0]) for p in used))
        hit = self._targets_memo.get(svc_key)
        if hit is not None and hit[0] == key:
            return hit[1]
        specs = worker_specs(list(rows), {svc_key: svc}, pools, self.settings.planner)
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
        error: str | None,
    ) -> _ServiceOutcome:
        """Steps of one service: make, routing, break (when settled), status and events."""
        out = _ServiceOutcome(routing=Routing(service=svc_key, slo_ms=svc.spec.slo.latency_ms))
        # 1. make: new groups, groups that grow, groups whose settings change.
        for key, spec in sorted(svc_targets.items(), key=lambda kv: kv[0].sort_key()):
            have = svc_workers.get(key)
            if key in self._caps:  # a MIG slice: no more replicas than slices exist now
                spec = spec.with_replicas(min(spec.replicas, self._caps[key]))
                if have is None and spec.replicas == 0:
                    continue
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
        applied = world.routing.get(svc_key)
        routing = standby_routing(svc, routing, applied)
        out.routing = routing
        in_place = applied is not None and applied.routing == routing
        if not in_place:
            out.route.append(ApplyRouting(svc_key, routing, svc.metadata.uid))
        shrinking = any(
            k not in svc_targets or svc_targets[k].replicas < s.replicas
            for k, s in svc_running.items()
        )
        if routing.final and shrinking:
            # The final routing is in place (or goes out first in this pass): break once it
            # has settled for drain_s, and never in the pass that writes it, nor in one where
            # the routers have yet to confirm it (`applied_at_s` is then now): at least
            # `MIN_SETTLE_S` after that.
            settled_for = now_s - applied.applied_at_s if in_place and applied else 0.0
            wait = max(self.settings.drain_s, MIN_SETTLE_S) - settled_for
            if wait > CLOCK_TOLERANCE_S:
                out.requeue_after_s = wait
            else:
                out.route.extend(self._break(svc_key, svc_targets, world))

        # 4. status and events.
        out.status = service_status_steps(
            svc_key,
            svc,
            rows,
            svc_workers,
            world,
            demand,
            summaries.get(svc_key),
            routing,
            now_s,
            planning_error=error,
            url=self.url_for(svc_key),
            shortfall=self._shortfall(svc_key, svc, summaries.get(svc_key)),
            notices=self.notices.get(svc_key, ()),
            cost=self.cost.published.get(svc_key),
            prewarm=self._prewarm(svc_key),
            device_waits=self.device_waits.get(svc_key, {}),
        )
        return out

    def _prewarm(self, key: str) -> tuple[bool, int, int]:
        """(pre-warmed now, pre-warms so far, those its traffic came back within)
        (`control.idle`)."""
        idle = self.idle
        return (
            key in idle.prewarmed,
            idle.prewarms.get(key, 0),
            idle.prewarms_met.get(key, 0),
        )

    def _shortfall(self, key: str, svc: InferenceService, summary: ServicePlan | None) -> str:
        plan = self.last_plan
        if plan is None or summary is None or summary.unserved_qps <= 1e-6:
            return ""
        problem = self.last_problem
        devices = {p.name: p.devices for p in problem.pools} if problem is not None else {}
        why = shortfall_reason(svc, key, plan, devices, self.overload)
        waiting = self.swap_gate.waiting_reason(key, self.startup)
        return f"{waiting}; {why}" if waiting else why

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
                steps.append(EnsureWorker(target, exists=True, stage="break"))
        return steps

    # -- acting --------------------------------------------------------------------------------

    async def reconcile(
        self, world: World, demand: DemandView, actuator: Actuator, concurrency: int = 1
    ) -> ReconcileResult:
        """Decide, then apply the steps (`runner.run_steps`: make before break, services in
        parallel up to `concurrency`).

        The decision runs in a worker thread: planning 1,000 services takes about a second,
        and on the event loop it would stall kopf's watches, the health probe and `/metrics`
        for as long. `world` and `demand` must not change while it runs (the drivers build or
        change them only between passes).
        """
        decision = await asyncio.to_thread(self.decide, world, demand)
        applied, failed = await run_steps(decision.steps, actuator, concurrency)
        return ReconcileResult(decision=decision, applied=applied, failed=failed)
